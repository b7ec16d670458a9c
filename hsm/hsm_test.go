package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/testenv"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// keyLabel gives each test its own key labels on the shared token.
func keyLabel(t testing.TB, suffix string) string {
	return strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "-" + suffix
}

// mustSignVerify signs a digest with s and verifies it against pub.
func mustSignVerify(t testing.TB, s crypto.Signer, pub crypto.PublicKey, msg string) {
	t.Helper()
	if err := signVerify(s, pub, msg); err != nil {
		t.Fatal(err)
	}
}

func signVerify(s crypto.Signer, pub crypto.PublicKey, msg string) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		h := crypto.SHA256
		if k.Curve == elliptic.P384() {
			h = crypto.SHA384
		}
		hh := h.New()
		hh.Write([]byte(msg))
		d := hh.Sum(nil)
		sig, err := s.Sign(nil, d, h)
		if err != nil {
			return err
		}
		if !ecdsa.VerifyASN1(k, d, sig) {
			return errors.New("ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		d := sha256.Sum256([]byte(msg))
		sig, err := s.Sign(nil, d[:], crypto.SHA256)
		if err != nil {
			return err
		}
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig); err != nil {
			return err
		}
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		sig, err = s.Sign(nil, d[:], pss)
		if err != nil {
			return err
		}
		if err := rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, pss); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unexpected public key %T", pub)
	}
	return nil
}

func TestGenerateFindAgain(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	label := keyLabel(t, "ca")
	ctx := context.Background()

	tok := h.Open(t, "", hsm.Options{})
	s, err := tok.GenerateSigner(ctx, label, "")
	if err != nil {
		t.Fatal(err)
	}
	if s.Algorithm() != hsm.ECDSAP256 || s.Label() != label || len(s.ID()) == 0 {
		t.Fatalf("signer: alg %q label %q id %x", s.Algorithm(), s.Label(), s.ID())
	}
	pub := s.Public()
	mustSignVerify(t, s, pub, "first run")
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, make([]byte, 32), crypto.SHA256); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("Sign after Close: %v, want ErrClosed", err)
	}

	// A second run finds the same key by label and keeps signing with it.
	tok2 := h.Open(t, label, hsm.Options{})
	again, err := tok2.FindSigner(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("found a different public key")
	}
	if !bytes.Equal(again.ID(), s.ID()) {
		t.Errorf("ID %x, want %x", again.ID(), s.ID())
	}
	mustSignVerify(t, again, pub, "second run")

	byID, err := tok2.FindSignerByID(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	mustSignVerify(t, byID, pub, "by id")

	byURI, err := tok2.SignerFromURI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if byURI.Label() != label {
		t.Errorf("SignerFromURI label %q, want %q", byURI.Label(), label)
	}

	if _, err := tok2.GenerateSigner(ctx, label, ""); !errors.Is(err, hsm.ErrKeyExists) {
		t.Errorf("GenerateSigner on an existing label: %v, want ErrKeyExists", err)
	}
}

func TestFindOrGenerateSigner(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	tok := h.Open(t, "", hsm.Options{})
	ctx := context.Background()
	label := keyLabel(t, "k")
	s1, created, err := tok.FindOrGenerateSigner(ctx, label, hsm.ECDSAP384)
	if err != nil || !created {
		t.Fatalf("first FindOrGenerateSigner: created=%v err=%v", created, err)
	}
	s2, created, err := tok.FindOrGenerateSigner(ctx, label, hsm.ECDSAP384)
	if err != nil || created {
		t.Fatalf("second FindOrGenerateSigner: created=%v err=%v", created, err)
	}
	if !s2.Public().(*ecdsa.PublicKey).Equal(s1.Public()) {
		t.Fatal("second call returned another key")
	}
}

func TestKeyAlgorithms(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	tok := h.Open(t, "", hsm.Options{})
	for _, tc := range []struct {
		alg     hsm.KeyAlgorithm
		keyType string
		check   func(crypto.PublicKey) bool
	}{
		{hsm.ECDSAP256, "EC", func(p crypto.PublicKey) bool { return p.(*ecdsa.PublicKey).Curve == elliptic.P256() }},
		{hsm.ECDSAP384, "EC", func(p crypto.PublicKey) bool { return p.(*ecdsa.PublicKey).Curve == elliptic.P384() }},
		{hsm.RSA3072, "RSA", func(p crypto.PublicKey) bool { return p.(*rsa.PublicKey).N.BitLen() == 3072 }},
	} {
		t.Run(string(tc.alg), func(t *testing.T) {
			t.Parallel()
			label := keyLabel(t, "k")
			s, err := tok.GenerateSigner(context.Background(), label, tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(s.Public()) || s.Algorithm() != tc.alg {
				t.Fatalf("public key %T, algorithm %q", s.Public(), s.Algorithm())
			}
			mustSignVerify(t, s, s.Public(), "message")
			info, err := tok.KeyInfo(context.Background(), label)
			if err != nil {
				t.Fatal(err)
			}
			if info.KeyType != tc.keyType || info.Algorithm != tc.alg {
				t.Errorf("KeyInfo type %q alg %q", info.KeyType, info.Algorithm)
			}
		})
	}
	if _, err := tok.GenerateSigner(context.Background(), keyLabel(t, "bad"), "dsa-1024"); err == nil {
		t.Error("GenerateSigner accepted an unsupported algorithm")
	}
}

func TestKeyAttributes(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	tok := h.Open(t, "", hsm.Options{})
	ctx := context.Background()
	label := keyLabel(t, "ca")
	s, err := tok.GenerateSigner(ctx, label, hsm.RSA3072)
	if err != nil {
		t.Fatal(err)
	}
	info, err := tok.KeyInfo(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	if info.Label != label || !bytes.Equal(info.ID, s.ID()) {
		t.Errorf("KeyInfo label %q id %x; want %q %x", info.Label, info.ID, label, s.ID())
	}
	for name, v := range map[string]bool{
		"Token": info.Token, "Private": info.Private, "Sensitive": info.Sensitive,
		"AlwaysSensitive": info.AlwaysSensitive, "NeverExtractable": info.NeverExtractable, "Sign": info.Sign,
	} {
		if !v {
			t.Errorf("KeyInfo.%s = false, want true", name)
		}
	}
	for name, v := range map[string]bool{
		"Extractable": info.Extractable, "Decrypt": info.Decrypt, "Unwrap": info.Unwrap, "Derive": info.Derive,
	} {
		if v {
			t.Errorf("KeyInfo.%s = true, want false", name)
		}
	}

	// The same, as pkcs11-tool (OpenSC) reads it from the token.
	out, err := exec.Command("pkcs11-tool", "--module", h.ModulePath, "--token-label", h.Label,
		"--login", "--pin", h.PIN, "--list-objects", "--type", "privkey").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool (run `make deps` for opensc): %v\n%s", err, out)
	}
	var block string
	for _, b := range regexp.MustCompile(`(?m)^Private Key Object`).Split(string(out), -1) {
		if strings.Contains(b, "label:      "+label+"\n") {
			block = b
		}
	}
	if block == "" {
		t.Fatalf("pkcs11-tool does not list key %q:\n%s", label, out)
	}
	access := regexp.MustCompile(`(?m)^\s*Access:\s*(.*)$`).FindStringSubmatch(block)
	usage := regexp.MustCompile(`(?m)^\s*Usage:\s*(.*)$`).FindStringSubmatch(block)
	if access == nil || usage == nil {
		t.Fatalf("no Access or Usage line for %q:\n%s", label, block)
	}
	for _, want := range []string{"sensitive", "always sensitive", "never extractable"} {
		if !strings.Contains(access[1], want) {
			t.Errorf("pkcs11-tool Access %q lacks %q", access[1], want)
		}
	}
	if strings.Contains(access[1], "extractable") && !strings.Contains(access[1], "never extractable") {
		t.Errorf("pkcs11-tool Access %q: key is extractable", access[1])
	}
	if strings.TrimSpace(usage[1]) != "sign" {
		t.Errorf("pkcs11-tool Usage %q, want sign only", usage[1])
	}
}

func TestConcurrentSign(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	tok := h.Open(t, "", hsm.Options{})
	s, err := tok.GenerateSigner(context.Background(), keyLabel(t, "k"), "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				if err := signVerify(s, s.Public(), fmt.Sprint(g, i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := tok.Health(context.Background()); err != nil {
		t.Errorf("Health: %v", err)
	}
}

func TestMissingModule(t *testing.T) {
	t.Parallel()
	notLib := filepath.Join(t.TempDir(), "not-a-module.so")
	if err := os.WriteFile(notLib, []byte("not an ELF file"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, module := range []string{"/nonexistent/libpkcs11.so", notLib} {
		u := &hsm.URI{Token: "rootgate", ModulePath: module, PinValue: "123456"}
		_, err := hsm.Open(context.Background(), u, hsm.Options{})
		if !errors.Is(err, hsm.ErrModule) {
			t.Errorf("Open with module %s: %v, want ErrModule", module, err)
			continue
		}
		if !strings.Contains(err.Error(), module) {
			t.Errorf("error %q does not name the module %s", err, module)
		}
	}
	_, err := hsm.Open(context.Background(), &hsm.URI{Token: "x", PinValue: "1"}, hsm.Options{})
	if !errors.Is(err, hsm.ErrModule) {
		t.Errorf("Open without module-path: %v, want ErrModule", err)
	}
}

func TestMissingToken(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	for _, u := range []*hsm.URI{
		{Token: "no-such-token", ModulePath: h.ModulePath, PinValue: h.PIN},
		{Token: h.Label, Serial: "no-such-serial", ModulePath: h.ModulePath, PinValue: h.PIN},
		{SlotID: new(int), Token: "no-such-token", ModulePath: h.ModulePath, PinValue: h.PIN},
	} {
		_, err := hsm.Open(context.Background(), u, hsm.Options{})
		if !errors.Is(err, hsm.ErrTokenNotFound) {
			t.Errorf("Open(%s): %v, want ErrTokenNotFound", u, err)
			continue
		}
		if !strings.Contains(err.Error(), "no-such") {
			t.Errorf("error %q does not name the token", err)
		}
		if strings.Contains(err.Error(), h.PIN) {
			t.Errorf("error %q shows the PIN", err)
		}
	}
}

func TestMissingKey(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	tok := h.Open(t, "no-such-key", hsm.Options{})
	ctx := context.Background()
	for name, f := range map[string]func() error{
		"FindSigner":     func() error { _, err := tok.FindSigner(ctx, "no-such-key"); return err },
		"KeyInfo":        func() error { _, err := tok.KeyInfo(ctx, "no-such-key"); return err },
		"FindSignerByID": func() error { _, err := tok.FindSignerByID(ctx, []byte("no-such-key")); return err },
		"SignerFromURI":  func() error { _, err := tok.SignerFromURI(ctx); return err },
	} {
		err := f()
		if !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("%s: %v, want ErrKeyNotFound", name, err)
			continue
		}
		if !strings.Contains(err.Error(), "no-such-key") && !strings.Contains(err.Error(), fmt.Sprintf("%x", "no-such-key")) {
			t.Errorf("%s: error %q does not name the key", name, err)
		}
	}
}

// TestWrongPIN runs sequentially: the first case needs a process that is
// not yet logged in to the token, the second one that is.
func TestWrongPIN(t *testing.T) {
	h := testenv.SoftHSM(t)
	const wrong = "wrong-pin-4711"
	check := func(t *testing.T) {
		var logs syncBuffer
		u := &hsm.URI{Token: h.Label, ModulePath: h.ModulePath, PinValue: wrong}
		start := time.Now()
		tok, err := hsm.Open(context.Background(), u, hsm.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err == nil {
			tok.Close()
			t.Fatal("Open with a wrong PIN succeeded")
		}
		if !errors.Is(err, hsm.ErrPIN) {
			t.Fatalf("Open with a wrong PIN: %v, want ErrPIN", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Open with a wrong PIN took %s", d)
		}
		if strings.Contains(err.Error(), wrong) || strings.Contains(logs.String(), wrong) {
			t.Errorf("the PIN shows in the error %q or the log %q", err, logs.String())
		}
		if !strings.Contains(err.Error(), h.Label) {
			t.Errorf("error %q does not name the token", err)
		}
	}
	t.Run("not logged in", check)
	t.Run("already logged in", func(t *testing.T) {
		good := h.Open(t, "", hsm.Options{})
		check(t)
		if err := good.Health(context.Background()); err != nil {
			t.Errorf("the logged-in Token broke: %v", err)
		}
	})
}

func TestMissingPIN(t *testing.T) {
	h := testenv.SoftHSM(t)
	t.Setenv(hsm.PINEnv, "")
	_, err := hsm.Open(context.Background(), &hsm.URI{Token: h.Label, ModulePath: h.ModulePath}, hsm.Options{})
	if !errors.Is(err, hsm.ErrPIN) {
		t.Fatalf("Open without a PIN: %v, want ErrPIN", err)
	}
	t.Setenv(hsm.PINEnv, h.PIN)
	tok, err := hsm.Open(context.Background(), &hsm.URI{Token: h.Label, ModulePath: h.ModulePath}, hsm.Options{})
	if err != nil {
		t.Fatalf("Open with the PIN from %s: %v", hsm.PINEnv, err)
	}
	tok.Close()
}

func TestOpenCancelled(t *testing.T) {
	t.Parallel()
	h := testenv.SoftHSM(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	u, _ := hsm.ParseURI(h.URI(""))
	if _, err := hsm.Open(ctx, u, hsm.Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a cancelled context: %v", err)
	}
}

// TestHSMDisappears moves SoftHSM's token directory away under a live
// Signer and brings it back. SoftHSM then invalidates the key's object
// handle (CKR_OBJECT_HANDLE_INVALID) and reports the token broken until the
// module is initialised again. It runs sequentially so that no other Token
// of the process holds the module.
func TestHSMDisappears(t *testing.T) {
	h := testenv.SoftHSM(t)
	var logs syncBuffer
	tok := h.Open(t, "", hsm.Options{
		Logger:     slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		MaxBackoff: 200 * time.Millisecond,
	})
	s, err := tok.GenerateSigner(context.Background(), keyLabel(t, "ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	pub := s.Public()
	mustSignVerify(t, s, pub, "before")

	restore := h.Outage(t)

	// Sign for a while: reconnect attempts fail (with backoff) and every
	// Sign fails fast with ErrUnavailable.
	for end := time.Now().Add(600 * time.Millisecond); time.Now().Before(end); {
		start := time.Now()
		err := signVerify(s, pub, "while away")
		if !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("Sign while the token is away: %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Sign while the token is away took %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "reconnect failed") {
		t.Errorf("no failed reconnect attempt while the token was away:\n%s", logs.String())
	}
	if err := tok.Health(context.Background()); !errors.Is(err, hsm.ErrUnavailable) {
		t.Errorf("Health while the token is away: %v, want ErrUnavailable", err)
	}

	restore()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := signVerify(s, pub, "after")
		if err == nil {
			break
		}
		if !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("Sign after the token came back: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Sign did not recover: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := tok.Health(context.Background()); err != nil {
		t.Errorf("Health after recovery: %v", err)
	}
	if strings.Contains(logs.String(), h.PIN) {
		t.Error("the log shows the PIN")
	}
	if !strings.Contains(logs.String(), "reconnected") {
		t.Errorf("no reconnect in the log:\n%s", logs.String())
	}
}

// TestModuleFinalized finalises the module (C_Finalize) under two live
// Tokens, so that crypto11's shared module instance stays referenced and a
// new context alone would not initialise it again. The next Sign on each
// recovers by itself, within its one retry. (C_Finalize while another
// thread is inside the module crashes SoftHSM, so nothing signs at that
// moment.)
func TestModuleFinalized(t *testing.T) {
	h := testenv.SoftHSM(t)
	opts := hsm.Options{MaxBackoff: 100 * time.Millisecond}
	tokA := h.Open(t, "", opts)
	tokB := h.Open(t, "", opts)
	sA, err := tokA.GenerateSigner(context.Background(), keyLabel(t, "a"), "")
	if err != nil {
		t.Fatal(err)
	}
	sB, err := tokB.GenerateSigner(context.Background(), keyLabel(t, "b"), "")
	if err != nil {
		t.Fatal(err)
	}
	mustSignVerify(t, sA, sA.Public(), "before")
	mustSignVerify(t, sB, sB.Public(), "before")

	raw := pkcs11.New(h.ModulePath)
	if err := raw.Finalize(); err != nil {
		t.Fatalf("C_Finalize: %v", err)
	}
	raw.Destroy()

	mustSignVerify(t, sA, sA.Public(), "after, A")
	mustSignVerify(t, sB, sB.Public(), "after, B")
	for _, tok := range []*hsm.Token{tokA, tokB} {
		if err := tok.Health(context.Background()); err != nil {
			t.Errorf("Health after recovery: %v", err)
		}
	}

	// Both keep working under concurrent use.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, s := range []*hsm.Signer{sA, sB, sA, sB} {
		wg.Go(func() {
			for range 20 {
				if err := signVerify(s, s.Public(), "busy"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkSign(b *testing.B) {
	h := testenv.SoftHSM(b)
	tok := h.Open(b, "", hsm.Options{})
	label := keyLabel(b, "k")
	s, _, err := tok.FindOrGenerateSigner(context.Background(), label, hsm.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	d := sha512.Sum512_256([]byte("benchmark"))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
