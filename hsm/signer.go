package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// KeyAlgorithm names the kind of key GenerateSigner creates.
type KeyAlgorithm string

// Key algorithms. The empty KeyAlgorithm means ECDSAP256.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	ECDSAP384 KeyAlgorithm = "ecdsa-p384"
	RSA3072   KeyAlgorithm = "rsa-3072"
)

// idLen is the length of the random CKA_ID given to generated keys.
const idLen = 16

// Signer is a private key in the token. It implements crypto.Signer and is
// safe for concurrent use. Its public key is read once and cached.
//
// On a session or device error Sign reopens the token, finds the key again
// (by CKA_ID, checking the public key) and retries once. While the token is
// unreachable Sign returns an error wrapping ErrUnavailable without
// waiting for the device; it recovers by itself once the token is back.
type Signer struct {
	tok   *Token
	label string
	id    []byte
	alg   KeyAlgorithm
	pub   crypto.PublicKey

	mu  sync.Mutex
	key crypto11.Signer // valid for connection generation gen
	gen uint64
}

// Public returns the public key.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Label returns the key's CKA_LABEL.
func (s *Signer) Label() string { return s.label }

// ID returns the key's CKA_ID.
func (s *Signer) ID() []byte { return append([]byte(nil), s.id...) }

// Algorithm returns the key's algorithm, e.g. "ecdsa-p256".
func (s *Signer) Algorithm() KeyAlgorithm { return s.alg }

// Sign signs digest with the key in the token. ECDSA signatures are ASN.1
// DER; RSA keys sign PKCS #1 v1.5, or PSS when opts is *rsa.PSSOptions. The
// rand argument is ignored: the token draws its own randomness.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var last error
	for try := 0; try < 2; try++ {
		key, c, ok := s.cached()
		var err error
		if !ok {
			key, c, err = s.currentWait()
		}
		if err != nil {
			return nil, fmt.Errorf("hsm: sign with key %q: %w", s.label, err)
		}
		sig, err := key.Sign(nil, digest, opts)
		if err == nil {
			return sig, nil
		}
		if !isDeviceError(err) {
			return nil, fmt.Errorf("hsm: sign with key %q: %w", s.label, err)
		}
		s.tok.invalidate(c.gen, err)
		last = err
	}
	return nil, fmt.Errorf("hsm: sign with key %q: %w: %w", s.label, ErrUnavailable, last)
}

// cached returns the key if it belongs to the live connection.
func (s *Signer) cached() (crypto11.Signer, conn, bool) {
	t := s.tok
	t.mu.Lock()
	c := conn{t.ctx, t.slot, t.gen}
	live := t.ctx != nil && !t.closed && t.fatal == nil
	t.mu.Unlock()
	if !live {
		return nil, conn{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key == nil || s.gen != c.gen {
		return nil, conn{}, false
	}
	return s.key, c, true
}

// currentWait is current for callers without a context: it waits at most
// signWait for a reconnect in progress.
func (s *Signer) currentWait() (crypto11.Signer, conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), signWait)
	defer cancel()
	return s.current(ctx)
}

// current returns the crypto11 key for the live connection, finding it
// again after a reconnect.
func (s *Signer) current(ctx context.Context) (crypto11.Signer, conn, error) {
	var key crypto11.Signer
	var cur conn
	err := s.tok.do(ctx, func(c conn) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		cur = c
		if s.key != nil && s.gen == c.gen {
			key = s.key
			return nil
		}
		k, err := findByID(c.ctx, s.id, s.pub)
		if err != nil {
			return err
		}
		if k == nil {
			return fmt.Errorf("%w: key %q (id %x) is gone from token %s", ErrKeyNotFound, s.label, s.id, s.tok.name())
		}
		s.key, s.gen = k, c.gen
		key = k
		return nil
	})
	return key, cur, err
}

// findByID returns the key pair with CKA_ID id whose public key is pub, or
// nil if there is none.
func findByID(c *crypto11.Context, id []byte, pub crypto.PublicKey) (crypto11.Signer, error) {
	keys, err := c.FindKeyPairs(id, nil)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if eq, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); ok && eq.Equal(pub) {
			return k, nil
		}
	}
	return nil, nil
}

// FindSigner returns the key labelled label. It fails with ErrKeyNotFound
// if there is none, and with an error if the label is ambiguous.
func (t *Token) FindSigner(ctx context.Context, label string) (*Signer, error) {
	if label == "" {
		return nil, fmt.Errorf("%w: empty key label", ErrKeyNotFound)
	}
	var s *Signer
	err := t.do(ctx, func(c conn) error {
		var err error
		s, err = t.find(c, nil, label)
		return err
	})
	return s, err
}

// FindSignerByID returns the key whose CKA_ID is id. It fails with
// ErrKeyNotFound if there is none.
func (t *Token) FindSignerByID(ctx context.Context, id []byte) (*Signer, error) {
	if len(id) == 0 {
		return nil, fmt.Errorf("%w: empty key id", ErrKeyNotFound)
	}
	var s *Signer
	err := t.do(ctx, func(c conn) error {
		var err error
		s, err = t.find(c, id, "")
		return err
	})
	return s, err
}

// SignerFromURI returns the key the Token's URI names: by object (label)
// and id when both are given, else by whichever is.
func (t *Token) SignerFromURI(ctx context.Context) (*Signer, error) {
	if t.uri.Object == "" && len(t.uri.ID) == 0 {
		return nil, fmt.Errorf("%w: URI %s names no key (object= or id=)", ErrKeyNotFound, t.uri)
	}
	var s *Signer
	err := t.do(ctx, func(c conn) error {
		var err error
		s, err = t.find(c, t.uri.ID, t.uri.Object)
		return err
	})
	return s, err
}

func describeKey(id []byte, label string) string {
	switch {
	case label != "" && len(id) > 0:
		return fmt.Sprintf("%q (id %x)", label, id)
	case label != "":
		return fmt.Sprintf("%q", label)
	}
	return fmt.Sprintf("with id %x", id)
}

// find returns the single key pair matching id and label.
func (t *Token) find(c conn, id []byte, label string) (*Signer, error) {
	var lb []byte
	if label != "" {
		lb = []byte(label)
	}
	keys, err := c.ctx.FindKeyPairs(id, lb)
	if err != nil {
		return nil, err
	}
	switch len(keys) {
	case 0:
		return nil, fmt.Errorf("%w: key %s in token %s", ErrKeyNotFound, describeKey(id, label), t.name())
	case 1:
	default:
		return nil, fmt.Errorf("hsm: %d keys %s in token %s: ambiguous", len(keys), describeKey(id, label), t.name())
	}
	return t.newSigner(c, keys[0])
}

// newSigner wraps a crypto11 key, reading its label and ID back.
func (t *Token) newSigner(c conn, k crypto11.Signer) (*Signer, error) {
	attrs, err := c.ctx.GetAttributes(k, []crypto11.AttributeType{crypto11.CkaLabel, crypto11.CkaId})
	if err != nil {
		return nil, err
	}
	s := &Signer{tok: t, pub: k.Public(), key: k, gen: c.gen}
	if a := attrs[crypto11.CkaLabel]; a != nil {
		s.label = string(a.Value)
	}
	if a := attrs[crypto11.CkaId]; a != nil {
		s.id = append([]byte(nil), a.Value...)
	}
	s.alg = algorithmOf(s.pub)
	return s, nil
}

// GenerateSigner creates a key pair labelled label inside the token. The
// private key is CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE
// and may only sign (no decrypt, unwrap, derive or sign-recover); it gets a
// random 16-byte CKA_ID. alg "" means ECDSA P-256. It fails with
// ErrKeyExists if a key pair with that label exists.
func (t *Token) GenerateSigner(ctx context.Context, label string, alg KeyAlgorithm) (*Signer, error) {
	if label == "" {
		return nil, errors.New("hsm: generate key: empty label")
	}
	if alg == "" {
		alg = ECDSAP256
	}
	switch alg {
	case ECDSAP256, ECDSAP384, RSA3072:
	default:
		return nil, fmt.Errorf("hsm: generate key %q: unsupported algorithm %q", label, alg)
	}
	t.genMu.Lock()
	defer t.genMu.Unlock()
	var s *Signer
	err := t.do(ctx, func(c conn) error {
		var err error
		s, err = t.generate(c, label, alg)
		return err
	})
	if err == nil {
		t.log.Info("hsm: generated key", "key", label, "alg", string(alg))
	}
	return s, err
}

func (t *Token) generate(c conn, label string, alg KeyAlgorithm) (*Signer, error) {
	existing, err := c.ctx.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, err
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("%w: key %q in token %s", ErrKeyExists, label, t.name())
	}
	id := make([]byte, idLen)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	pub, err := crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label))
	if err != nil {
		return nil, err
	}
	priv := pub.Copy()
	for typ, v := range map[crypto11.AttributeType]bool{
		crypto11.CkaToken:       true,
		crypto11.CkaPrivate:     true,
		crypto11.CkaSensitive:   true,
		crypto11.CkaExtractable: false,
		crypto11.CkaSign:        true,
		crypto11.CkaSignRecover: false,
		crypto11.CkaDecrypt:     false,
		crypto11.CkaUnwrap:      false,
		crypto11.CkaDerive:      false,
	} {
		if err := priv.Set(typ, v); err != nil {
			return nil, err
		}
	}
	for typ, v := range map[crypto11.AttributeType]bool{
		crypto11.CkaToken:   true,
		crypto11.CkaPrivate: false,
		crypto11.CkaVerify:  true,
		crypto11.CkaEncrypt: false,
		crypto11.CkaWrap:    false,
	} {
		if err := pub.Set(typ, v); err != nil {
			return nil, err
		}
	}
	var k crypto11.Signer
	switch alg {
	case ECDSAP256:
		k, err = c.ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P256())
	case ECDSAP384:
		k, err = c.ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P384())
	case RSA3072:
		k, err = c.ctx.GenerateRSAKeyPairWithAttributes(pub, priv, 3072)
	}
	if err != nil {
		if isDeviceError(err) {
			return nil, err
		}
		return nil, fmt.Errorf("hsm: generate %s key %q in token %s: %w", alg, label, t.name(), err)
	}
	return &Signer{tok: t, label: label, id: id, alg: alg, pub: k.Public(), key: k, gen: c.gen}, nil
}

// FindOrGenerateSigner returns the key labelled label, generating it with
// alg if the token has none; created reports which happened.
func (t *Token) FindOrGenerateSigner(ctx context.Context, label string, alg KeyAlgorithm) (s *Signer, created bool, err error) {
	t.genMu.Lock()
	s, err = t.FindSigner(ctx, label)
	t.genMu.Unlock()
	if err == nil {
		return s, false, nil
	}
	if !errors.Is(err, ErrKeyNotFound) {
		return nil, false, err
	}
	s, err = t.GenerateSigner(ctx, label, alg)
	if errors.Is(err, ErrKeyExists) { // generated meanwhile by another caller
		s, err = t.FindSigner(ctx, label)
		return s, false, err
	}
	return s, err == nil, err
}

// KeyInfo describes a private key as the token reports it.
type KeyInfo struct {
	Label     string
	ID        []byte
	Algorithm KeyAlgorithm // from the public key, e.g. "ecdsa-p256"
	KeyType   string       // CKA_KEY_TYPE: "EC", "RSA" or a number
	Public    crypto.PublicKey

	Token            bool // CKA_TOKEN: stored in the token
	Private          bool // CKA_PRIVATE: usable only after login
	Sensitive        bool // CKA_SENSITIVE
	AlwaysSensitive  bool // CKA_ALWAYS_SENSITIVE
	Extractable      bool // CKA_EXTRACTABLE
	NeverExtractable bool // CKA_NEVER_EXTRACTABLE
	Sign             bool // CKA_SIGN
	Decrypt          bool // CKA_DECRYPT
	Unwrap           bool // CKA_UNWRAP
	Derive           bool // CKA_DERIVE
}

// KeyInfo reads the attributes of the private key labelled label back from
// the token. It fails with ErrKeyNotFound if there is none.
func (t *Token) KeyInfo(ctx context.Context, label string) (*KeyInfo, error) {
	s, err := t.FindSigner(ctx, label)
	if err != nil {
		return nil, err
	}
	return s.KeyInfo(ctx)
}

// KeyInfo reads the attributes of the signer's private key from the token.
func (s *Signer) KeyInfo(ctx context.Context) (*KeyInfo, error) {
	types := []crypto11.AttributeType{
		crypto11.CkaLabel, crypto11.CkaId, crypto11.CkaKeyType, crypto11.CkaToken,
		crypto11.CkaPrivate, crypto11.CkaSensitive, crypto11.CkaAlwaysSensitive,
		crypto11.CkaExtractable, crypto11.CkaNeverExtractable, crypto11.CkaSign,
		crypto11.CkaDecrypt, crypto11.CkaUnwrap, crypto11.CkaDerive,
	}
	var attrs crypto11.AttributeSet
	for try := 0; try < 2; try++ {
		key, c, err := s.current(ctx)
		if err != nil {
			return nil, fmt.Errorf("hsm: read attributes of key %q: %w", s.label, err)
		}
		attrs, err = c.ctx.GetAttributes(key, types)
		if err == nil {
			break
		}
		if !isDeviceError(err) {
			return nil, fmt.Errorf("hsm: read attributes of key %q: %w", s.label, err)
		}
		if try == 1 {
			return nil, fmt.Errorf("hsm: read attributes of key %q: %w: %w", s.label, ErrUnavailable, err)
		}
		s.tok.invalidate(c.gen, err)
	}
	b := func(typ crypto11.AttributeType) bool {
		a := attrs[typ]
		return a != nil && len(a.Value) > 0 && a.Value[0] != 0
	}
	info := &KeyInfo{
		Algorithm:        s.alg,
		Public:           s.pub,
		Token:            b(crypto11.CkaToken),
		Private:          b(crypto11.CkaPrivate),
		Sensitive:        b(crypto11.CkaSensitive),
		AlwaysSensitive:  b(crypto11.CkaAlwaysSensitive),
		Extractable:      b(crypto11.CkaExtractable),
		NeverExtractable: b(crypto11.CkaNeverExtractable),
		Sign:             b(crypto11.CkaSign),
		Decrypt:          b(crypto11.CkaDecrypt),
		Unwrap:           b(crypto11.CkaUnwrap),
		Derive:           b(crypto11.CkaDerive),
	}
	if a := attrs[crypto11.CkaLabel]; a != nil {
		info.Label = string(a.Value)
	}
	if a := attrs[crypto11.CkaId]; a != nil {
		info.ID = append([]byte(nil), a.Value...)
	}
	info.KeyType = "unknown"
	if a := attrs[crypto11.CkaKeyType]; a != nil {
		var kt uint64
		switch len(a.Value) {
		case 8:
			kt = binary.NativeEndian.Uint64(a.Value)
		case 4:
			kt = uint64(binary.NativeEndian.Uint32(a.Value))
		}
		switch kt {
		case pkcs11.CKK_EC:
			info.KeyType = "EC"
		case pkcs11.CKK_RSA:
			info.KeyType = "RSA"
		default:
			info.KeyType = fmt.Sprintf("0x%x", kt)
		}
	}
	return info, nil
}

// algorithmOf names the algorithm of a public key.
func algorithmOf(pub crypto.PublicKey) KeyAlgorithm {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256
		case elliptic.P384():
			return ECDSAP384
		}
		return KeyAlgorithm("ecdsa-" + k.Curve.Params().Name)
	case *rsa.PublicKey:
		return KeyAlgorithm(fmt.Sprintf("rsa-%d", k.N.BitLen()))
	}
	return KeyAlgorithm(fmt.Sprintf("%T", pub))
}
