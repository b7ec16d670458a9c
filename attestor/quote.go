package attestor

import (
	"cmp"
	"crypto"
	"fmt"
	"slices"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// maxPCRIndex is the highest PCR index of a PC Client TPM.
const maxPCRIndex = 23

// VerifyQuote checks that quotes, signed by the AK whose TPMT_PUBLIC is
// akPublic (a restricted signing key, see VerifyAK), were made by the TPM
// (TPM_GENERATED_VALUE) for nonce over exactly the values in pcrs, and that
// every PCR in pcrs is covered by a quote. It returns copies of the PCRs,
// all verified, sorted by digest algorithm and index. pcrs may not hold an
// index twice for one algorithm.
//
// Errors wrap ErrMalformed, ErrAKInvalid, ErrNonce or ErrQuote.
func VerifyQuote(akPublic []byte, quotes []attest.Quote, pcrs []attest.PCR, nonce []byte) ([]attest.PCR, error) {
	if len(nonce) == 0 {
		return nil, fmt.Errorf("%w: no nonce to check the quote against", ErrNonce)
	}
	ak, err := parsePublic("AK public area", akPublic)
	if err != nil {
		return nil, err
	}
	if err := checkAKPublic(ak); err != nil {
		return nil, err
	}
	if len(quotes) == 0 {
		return nil, fmt.Errorf("%w: no quote", ErrQuote)
	}
	if len(pcrs) == 0 {
		return nil, fmt.Errorf("%w: no PCR values", ErrQuote)
	}
	type slot struct {
		alg   crypto.Hash
		index int
	}
	seen := make(map[slot]bool, len(pcrs))
	out := make([]attest.PCR, 0, len(pcrs))
	for _, p := range pcrs {
		if p.Index < 0 || p.Index > maxPCRIndex {
			return nil, fmt.Errorf("%w: PCR index %d out of range", ErrMalformed, p.Index)
		}
		if !p.DigestAlg.Available() || len(p.Digest) != p.DigestAlg.Size() {
			return nil, fmt.Errorf("%w: PCR %d: digest of %d bytes for algorithm %v", ErrMalformed, p.Index, len(p.Digest), p.DigestAlg)
		}
		s := slot{p.DigestAlg, p.Index}
		if seen[s] {
			return nil, fmt.Errorf("%w: PCR %d (%v) given twice", ErrMalformed, p.Index, p.DigestAlg)
		}
		seen[s] = true
		out = append(out, attest.PCR{Index: p.Index, DigestAlg: p.DigestAlg, Digest: slices.Clone(p.Digest)})
	}
	// Our own checks of what go-attestation leaves out: signature scheme
	// and TPM_GENERATED_VALUE, and the nonce (named as a nonce error).
	for i, q := range quotes {
		att, err := parseAttest(fmt.Sprintf("quote %d", i), q.Quote, tpm2.TagAttestQuote)
		if err != nil {
			return nil, err
		}
		if err := verifySignature(ak, q.Quote, q.Signature); err != nil {
			return nil, fmt.Errorf("%w: quote %d not signed by the AK: %v", ErrQuote, i, err)
		}
		if att.Magic != tpmGeneratedValue {
			return nil, fmt.Errorf("%w: quote %d not produced by a TPM", ErrQuote, i)
		}
		if string(att.ExtraData) != string(nonce) {
			return nil, fmt.Errorf("%w: quote %d was made for another nonce", ErrNonce, i)
		}
	}
	akPub, err := attest.ParseAKPublic(akPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public area: %v", ErrMalformed, err)
	}
	if err := safeCall(func() error { return akPub.VerifyAll(quotes, out, nonce) }); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrQuote, err)
	}
	slices.SortFunc(out, func(a, b attest.PCR) int {
		return cmp.Or(cmp.Compare(a.DigestAlg, b.DigestAlg), cmp.Compare(a.Index, b.Index))
	})
	return out, nil
}
