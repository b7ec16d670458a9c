package enroll

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/rootgate/rootgate/attestor"
)

// LoadEKVerifier builds the EK trust configuration from dir, a directory of
// manufacturer root and intermediate certificates (each regular file PEM or
// DER, as attestor.ParseEKRoots reads them; hidden files are skipped), and
// allowlist, EK fingerprints trusted without a certificate. An empty dir
// means no roots.
func LoadEKVerifier(dir string, allowlist []string) (*attestor.EKVerifier, error) {
	v := &attestor.EKVerifier{Allowlist: map[string]bool{}}
	for _, fp := range allowlist {
		n, err := attestor.NormalizeFingerprint(fp)
		if err != nil {
			return nil, fmt.Errorf("enroll: EK allowlist: %w", err)
		}
		v.Allowlist[n] = true
	}
	if dir == "" {
		return v, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("enroll: EK roots: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var files [][]byte
	for _, e := range entries {
		if e.Name()[0] == '.' {
			continue
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Stat(path) // follows symlinks
		if err != nil {
			return nil, fmt.Errorf("enroll: EK roots: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("enroll: EK roots: %w", err)
		}
		if _, _, err := attestor.ParseEKRoots([][]byte{b}); err != nil {
			return nil, fmt.Errorf("enroll: EK roots: %s: %w", path, err)
		}
		files = append(files, b)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("enroll: EK roots: no certificate files in %s", dir)
	}
	roots, inter, err := attestor.ParseEKRoots(files)
	if err != nil {
		return nil, fmt.Errorf("enroll: EK roots in %s: %w", dir, err)
	}
	v.Roots, v.Intermediates = roots, inter
	return v, nil
}
