package enroll

import (
	"crypto"
	"io"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/rootgate/rootgate/attestor"
)

// evidence is the TPM evidence verification the service relies on. The
// service uses attestorEvidence; tests substitute a fake to drive the state
// machine without a TPM.
type evidence interface {
	verifyEK(ekPub crypto.PublicKey, certDER []byte, chainDER [][]byte, now time.Time) (*attestor.EKResult, error)
	verifyAK(ekPub crypto.PublicKey, ak attest.AttestationParameters) error
	newChallenge(rand io.Reader, ekPub crypto.PublicKey, ak attest.AttestationParameters) ([]byte, *attest.EncryptedCredential, error)
	checkSecret(want, got []byte) error
	verifyCertification(akPublic []byte, cp attest.CertificationParameters, nonce []byte, csrPub crypto.PublicKey) (crypto.PublicKey, error)
	verifyQuote(akPublic []byte, quotes []attest.Quote, pcrs []attest.PCR, nonce []byte) ([]attest.PCR, error)
}

// attestorEvidence verifies with package attestor.
type attestorEvidence struct{ ek *attestor.EKVerifier }

func (a attestorEvidence) verifyEK(ekPub crypto.PublicKey, certDER []byte, chainDER [][]byte, now time.Time) (*attestor.EKResult, error) {
	return a.ek.Verify(ekPub, certDER, chainDER, now)
}

func (attestorEvidence) verifyAK(ekPub crypto.PublicKey, ak attest.AttestationParameters) error {
	return attestor.VerifyAK(ekPub, ak)
}

func (attestorEvidence) newChallenge(rand io.Reader, ekPub crypto.PublicKey, ak attest.AttestationParameters) ([]byte, *attest.EncryptedCredential, error) {
	return attestor.NewChallenge(rand, ekPub, ak)
}

func (attestorEvidence) checkSecret(want, got []byte) error { return attestor.CheckSecret(want, got) }

func (attestorEvidence) verifyCertification(akPublic []byte, cp attest.CertificationParameters, nonce []byte, csrPub crypto.PublicKey) (crypto.PublicKey, error) {
	return attestor.VerifyCertification(akPublic, cp, nonce, csrPub)
}

func (attestorEvidence) verifyQuote(akPublic []byte, quotes []attest.Quote, pcrs []attest.PCR, nonce []byte) ([]attest.PCR, error) {
	return attestor.VerifyQuote(akPublic, quotes, pcrs, nonce)
}
