package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"

	"github.com/google/go-attestation/attest"
)

// chooseEK picks the EK to present: an RSA EK with a certificate first,
// then any EK with a certificate, then the first one.
func chooseEK(eks []attest.EK) (attest.EK, error) {
	if len(eks) == 0 {
		return attest.EK{}, errors.New("agent: the TPM reports no endorsement key")
	}
	for _, ek := range eks {
		if _, ok := ek.Public.(*rsa.PublicKey); ok && ek.Certificate != nil {
			return ek, nil
		}
	}
	for _, ek := range eks {
		if ek.Certificate != nil {
			return ek, nil
		}
	}
	return eks[0], nil
}

// describeKey names a public key's algorithm and size, e.g. "RSA 2048".
func describeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECC " + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", pub)
}

// describeEK is the progress line for the chosen EK.
func describeEK(ek attest.EK) string {
	s := "EK: " + describeKey(ek.Public)
	if ek.Certificate == nil {
		return s + ", no certificate in the TPM"
	}
	issuer := ek.Certificate.Issuer.CommonName
	if issuer == "" {
		issuer = ek.Certificate.Issuer.String()
	}
	return s + ", certificate issued by " + issuer
}

// loadOrCreateAK loads the AK blob from the state directory, or creates a
// new ECDSA P-256 AK and saves its TPM-wrapped blob. A blob the TPM no longer
// accepts (for example after its storage hierarchy was cleared) is replaced.
// The caller closes the AK with ak.Close(tpm).
func loadOrCreateAK(tpm *attest.TPM, sd *StateDir, log *slog.Logger) (ak *attest.AK, created bool, err error) {
	blob, err := sd.Read(AKFile)
	switch {
	case err == nil:
		ak, lerr := tpm.LoadAK(blob)
		if lerr == nil {
			return ak, false, nil
		}
		log.Warn("stored AK does not load; creating a new one", "path", sd.File(AKFile), "err", lerr)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, err
	}
	ak, err = tpm.NewAK(&attest.AKConfig{Algorithm: attest.ECDSA})
	if err != nil {
		return nil, false, fmt.Errorf("agent: create AK: %w", err)
	}
	blob, err = ak.Marshal()
	if err == nil {
		err = sd.Write(AKFile, blob)
	}
	if err != nil {
		ak.Close(tpm)
		return nil, false, fmt.Errorf("agent: save AK: %w", err)
	}
	return ak, true, nil
}

// newDeviceKey creates an ECDSA P-256 signing key in the TPM, certified by
// ak (TPM2_Certify) with nonce as qualifying data. The caller closes it.
func newDeviceKey(tpm *attest.TPM, ak *attest.AK, nonce []byte) (*attest.Key, error) {
	key, err := tpm.NewKey(ak, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: nonce})
	if err != nil {
		return nil, fmt.Errorf("agent: create device key: %w", err)
	}
	return key, nil
}

// keySigner returns the TPM-resident key as a crypto.Signer.
func keySigner(key *attest.Key) (crypto.Signer, error) {
	priv, err := key.Private(key.Public())
	if err != nil {
		return nil, fmt.Errorf("agent: device key: %w", err)
	}
	s, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("agent: device key: %T is not a crypto.Signer", priv)
	}
	return s, nil
}

// newCSR returns a PKCS#10 request signed by signer, with subject CN =
// deviceID and, when spiffeID is set, that URI SAN.
func newCSR(signer crypto.Signer, deviceID, spiffeID string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: deviceID}}
	if spiffeID != "" {
		u, err := url.Parse(spiffeID)
		if err != nil {
			return nil, fmt.Errorf("agent: SPIFFE ID %q: %w", spiffeID, err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("agent: sign CSR with the device key: %w", err)
	}
	return der, nil
}
