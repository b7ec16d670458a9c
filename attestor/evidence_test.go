package attestor

import (
	"crypto"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
)

// evidence is what one device sent in one enrollment, as captured from
// swtpm into testdata/*.json (see testdata/README.md).
type evidence struct {
	Source     string                         `json:"source"`
	EKPublic   []byte                         `json:"ek_public"` // PKIX DER
	EKCert     []byte                         `json:"ek_cert,omitempty"`
	RootPEM    []byte                         `json:"root_pem,omitempty"`
	IssuerPEM  []byte                         `json:"issuer_pem,omitempty"`
	Now        time.Time                      `json:"now"` // a time inside the EK certificate's validity
	AK         attest.AttestationParameters   `json:"ak"`
	Activation activation                     `json:"activation"`
	Nonce      []byte                         `json:"nonce"`
	Key        attest.CertificationParameters `json:"key"`
	KeyPKIX    []byte                         `json:"key_pkix"`
	Quotes     []attest.Quote                 `json:"quotes,omitempty"`
	PCRs       []pcrJSON                      `json:"pcrs,omitempty"`
}

// activation is one challenge sealed to the EK and the device's answer.
type activation struct {
	Credential []byte `json:"credential,omitempty"`
	Secret     []byte `json:"secret,omitempty"`
	Answer     []byte `json:"answer,omitempty"`
}

type pcrJSON struct {
	Index  int         `json:"index"`
	Alg    crypto.Hash `json:"alg"`
	Digest []byte      `json:"digest"`
}

func toPCRJSON(pcrs []attest.PCR) []pcrJSON {
	out := make([]pcrJSON, len(pcrs))
	for i, p := range pcrs {
		out[i] = pcrJSON{p.Index, p.DigestAlg, p.Digest}
	}
	return out
}

func fromPCRJSON(pcrs []pcrJSON) []attest.PCR {
	out := make([]attest.PCR, len(pcrs))
	for i, p := range pcrs {
		out[i] = attest.PCR{Index: p.Index, DigestAlg: p.Alg, Digest: append([]byte(nil), p.Digest...)}
	}
	return out
}

func loadEvidence(t testing.TB, name string) *evidence {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var ev evidence
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatal(err)
	}
	return &ev
}
