package ca

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// TrustDomainFile, in the CA directory <data-dir>/ca, records the SPIFFE
// trust domain the CA issues for. Init writes it together with the chain or
// the CSR; everything that later works on the data directory uses it when
// no trust domain is given explicitly, and refuses one that differs (as
// SPIRE refuses a server whose trust domain is not its datastore's). A data
// directory made before the file existed has none: the configured trust
// domain is used.
const TrustDomainFile = "trust-domain"

// ErrTrustDomain: a trust domain was given that is not the one recorded in
// the data directory.
var ErrTrustDomain = errors.New("ca: trust domain differs from the data directory's")

// TrustDomainPath returns the path of the recorded trust domain inside a
// data directory.
func TrustDomainPath(dataDir string) string { return filepath.Join(Dir(dataDir), TrustDomainFile) }

// LoadTrustDomain returns the trust domain recorded in dataDir, or "" and
// no error when none is recorded (a data directory from before the record
// existed, or one without a CA). A record that is not a valid trust domain
// is an error.
func LoadTrustDomain(dataDir string) (string, error) {
	path := TrustDomainPath(dataDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("ca: load trust domain: %w", err)
	}
	td := strings.TrimSpace(string(data))
	if err := ValidateTrustDomain(td); err != nil {
		return "", fmt.Errorf("ca: load trust domain %s: %w", path, err)
	}
	return td, nil
}

// RecordTrustDomain records td as dataDir's trust domain (atomically, in
// TrustDomainPath). Recording the trust domain already recorded is a no-op;
// recording another one is refused with a *TrustDomainMismatchError.
func RecordTrustDomain(dataDir, td string) error {
	if err := ValidateTrustDomain(td); err != nil {
		return fmt.Errorf("ca: record trust domain: %w", err)
	}
	recorded, err := LoadTrustDomain(dataDir)
	if err != nil {
		return err
	}
	if recorded == td {
		return nil
	}
	if recorded != "" {
		return &TrustDomainMismatchError{DataDir: dataDir, Recorded: recorded, Given: td, Source: "the new CA"}
	}
	if err := writeFileAtomic(TrustDomainPath(dataDir), []byte(td+"\n")); err != nil {
		return fmt.Errorf("ca: record trust domain: %w", err)
	}
	return nil
}

// ResolveTrustDomain returns the trust domain to use on dataDir: the
// recorded one when given is empty, given when nothing is recorded (given
// may then be empty too: the caller picks its default), and an error
// (*TrustDomainMismatchError, matching ErrTrustDomain) when both are set and
// differ. source names where given came from in that error
// ("--trust-domain", "trust_domain in FILE").
func ResolveTrustDomain(dataDir, given, source string) (string, error) {
	recorded, err := LoadTrustDomain(dataDir)
	if err != nil {
		return "", err
	}
	switch {
	case recorded == "":
		return given, nil
	case given == "" || given == recorded:
		return recorded, nil
	}
	return "", &TrustDomainMismatchError{DataDir: dataDir, Recorded: recorded, Given: given, Source: source}
}

// TrustDomainMismatchError reports a trust domain that differs from the one
// recorded in a data directory. It matches ErrTrustDomain.
type TrustDomainMismatchError struct {
	DataDir  string
	Recorded string // the data directory's
	Given    string // the one asked for
	Source   string // where Given came from, e.g. "--trust-domain"
}

func (e *TrustDomainMismatchError) Error() string {
	source := e.Source
	if source == "" {
		source = "the configuration"
	}
	return fmt.Sprintf("data dir %s belongs to trust domain %s; %s says %s (recorded in %s by 'rootgate ca init'; "+
		"identities issued for one trust domain are not valid in another)",
		e.DataDir, e.Recorded, source, e.Given, TrustDomainPath(e.DataDir))
}

// Is makes the error match ErrTrustDomain.
func (e *TrustDomainMismatchError) Is(target error) bool { return target == ErrTrustDomain }

// HasCA reports whether dataDir holds a CA: an installed chain
// (ChainPath) or an intermediate CSR waiting for its certificate
// (CSRPath). It creates nothing.
func HasCA(dataDir string) (bool, error) {
	for _, p := range []string{ChainPath(dataDir), CSRPath(dataDir)} {
		_, err := os.Stat(p)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return false, fmt.Errorf("ca: %w", err)
		}
	}
	return false, nil
}
