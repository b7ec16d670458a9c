package hsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/rootgate/rootgate/hsm"
)

func intp(n int) *int { return &n }

func TestParseURI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want hsm.URI
	}{
		{"pkcs11:", hsm.URI{}},
		{"PKCS11:token=a", hsm.URI{Token: "a"}},
		{
			"pkcs11:token=rootgate;object=issuing-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/rootgate/pin",
			hsm.URI{Token: "rootgate", Object: "issuing-ca", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PinSource: "file:/etc/rootgate/pin"},
		},
		{
			"pkcs11:token=My%20Token;id=%01%02%FF;slot-id=1569898188;type=private?pin-value=1234",
			hsm.URI{Token: "My Token", ID: []byte{1, 2, 0xff}, SlotID: intp(1569898188), PinValue: "1234"},
		},
		{
			"pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;serial=abc123;x-vendor=ignored?x-q=1&pin-source=env:MY_PIN",
			hsm.URI{Manufacturer: "SoftHSM project", Model: "SoftHSM v2", Serial: "abc123", PinSource: "env:MY_PIN"},
		},
		{"pkcs11:object=a&b=c:d", hsm.URI{Object: "a&b=c:d"}},
		{"pkcs11:token=t?pin-source=file:///run/pin", hsm.URI{Token: "t", PinSource: "file:///run/pin"}},
		{"pkcs11:token=t?pin-source=/run/pin", hsm.URI{Token: "t", PinSource: "/run/pin"}},
		{"pkcs11:token=t?pin-value=a;b?c/d", hsm.URI{Token: "t", PinValue: "a;b?c/d"}},
		{"pkcs11:token=t?", hsm.URI{Token: "t"}},
	}
	for _, tc := range tests {
		got, err := hsm.ParseURI(tc.in)
		if err != nil {
			t.Errorf("ParseURI(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("ParseURI(%q) = %#v\nwant %#v", tc.in, fieldsOf(*got), fieldsOf(tc.want))
		}
	}
}

// fieldsOf prints a URI with its PIN for test failure messages.
func fieldsOf(u hsm.URI) string {
	return fmt.Sprintf("{%s pin-value=%q}", u.String(), u.PinValue)
}

func TestParseURIErrors(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"",
		"pkcs11",
		"http://example.com",
		"pkcs11:token",           // no '='
		"pkcs11:=x",              // no name
		"pkcs11:token=a;token=b", // repeated
		"pkcs11:token=a;",        // empty attribute
		"pkcs11:token=a b",       // raw space
		"pkcs11:token=%",         // truncated escape
		"pkcs11:token=%4",        // truncated escape
		"pkcs11:token=%zz",       // bad escape
		"pkcs11:token=a/b",       // '/' not allowed in the path
		"pkcs11:slot-id=-1",      // not digits
		"pkcs11:slot-id=",        // empty
		"pkcs11:slot-id=99999999999999999999999",
		"pkcs11:type=cert",         // not a private key
		"pkcs11:library-version=1", // unsupported
		"pkcs11:token=a?module-name=softhsm2",
		"pkcs11:token=a?module-path=",
		"pkcs11:token=a?pin-value=",
		"pkcs11:token=a?pin-value=1&pin-value=2",
		"pkcs11:token=a?pin-value=1&pin-source=file:/x",
		"pkcs11:token=a?pin-source=file:relative",
		"pkcs11:token=a?pin-source=file://host/x",
		"pkcs11:token=a?pin-source=|/usr/bin/pinentry",
		"pkcs11:token=a?pin-source=env:",
		"pkcs11:token=a?pin-source=https://example.com/pin",
		"pkcs11:token=a?bogus",
	} {
		if u, err := hsm.ParseURI(in); err == nil {
			t.Errorf("ParseURI(%q) = %s, want an error", in, u)
		}
	}
}

func TestParseURIErrorNeverShowsPIN(t *testing.T) {
	t.Parallel()
	const pin = "s3cr3t-PIN"
	for _, in := range []string{
		"pkcs11:token=a?pin-value=" + pin + "%zz",
		"pkcs11:token=a?pin-value=" + pin + " x",
		"pkcs11:token=a?pin-value" + pin,
		"pkcs11:token=a?pin-value=" + pin + "&pin-source=file:/x",
		"pkcs11:token=a?pin-value=" + pin + "&pin-value=" + pin,
	} {
		_, err := hsm.ParseURI(in)
		if err == nil {
			t.Fatalf("ParseURI(%q): no error", in)
		}
		if strings.Contains(err.Error(), pin) {
			t.Errorf("ParseURI error %q shows the PIN", err)
		}
	}
}

func TestURIStringRedactsPIN(t *testing.T) {
	t.Parallel()
	const pin = "correct-horse-battery"
	u, err := hsm.ParseURI("pkcs11:token=rootgate;object=ca;id=%AB?module-path=/m.so&pin-value=" + pin)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "uri", u, "value", *u)
	for _, s := range []string{
		u.String(),
		fmt.Sprint(u), fmt.Sprintf("%v", *u), fmt.Sprintf("%+v", u), fmt.Sprintf("%#v", u), fmt.Sprintf("%#v", *u), fmt.Sprintf("%s", u),
		logged.String(),
	} {
		if strings.Contains(s, pin) {
			t.Errorf("printed URI %q contains the PIN", s)
		}
	}
	want := "pkcs11:token=rootgate;object=ca;id=%AB?module-path=/m.so&pin-value=REDACTED"
	if got := u.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if r := u.Redacted(); r.PinValue != "" || r.Token != "rootgate" {
		t.Errorf("Redacted() = %s with PIN %q", r, r.PinValue)
	}
}

func TestResolvePIN(t *testing.T) {
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	crlfFile := filepath.Join(dir, "pin-crlf")
	if err := os.WriteFile(crlfFile, []byte("crlf\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("RG_TEST_PIN", "from-env")
	t.Setenv(hsm.PINEnv, "from-default-env")

	for _, tc := range []struct {
		uri, want string
	}{
		{"pkcs11:token=a?pin-value=literal", "literal"},
		{"pkcs11:token=a?pin-source=file:" + pinFile, "from-file"},
		{"pkcs11:token=a?pin-source=file://" + pinFile, "from-file"},
		{"pkcs11:token=a?pin-source=" + pinFile, "from-file"},
		{"pkcs11:token=a?pin-source=file:" + crlfFile, "crlf"},
		{"pkcs11:token=a?pin-source=env:RG_TEST_PIN", "from-env"},
		{"pkcs11:token=a", "from-default-env"},
	} {
		u, err := hsm.ParseURI(tc.uri)
		if err != nil {
			t.Fatalf("ParseURI(%q): %v", tc.uri, err)
		}
		got, err := u.ResolvePIN()
		if err != nil || got != tc.want {
			t.Errorf("ResolvePIN(%s) = %q, %v; want %q", u, got, err, tc.want)
		}
	}

	for _, uri := range []string{
		"pkcs11:token=a?pin-source=file:" + filepath.Join(dir, "missing"),
		"pkcs11:token=a?pin-source=file:" + emptyFile,
		"pkcs11:token=a?pin-source=env:RG_TEST_PIN_UNSET",
	} {
		u, err := hsm.ParseURI(uri)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.ResolvePIN(); !errors.Is(err, hsm.ErrPIN) {
			t.Errorf("ResolvePIN(%s) error = %v, want ErrPIN", u, err)
		}
	}

	t.Setenv(hsm.PINEnv, "")
	u, _ := hsm.ParseURI("pkcs11:token=a")
	_, err := u.ResolvePIN()
	if !errors.Is(err, hsm.ErrPIN) || !strings.Contains(err.Error(), hsm.PINEnv) {
		t.Errorf("ResolvePIN without any PIN: %v; want ErrPIN naming %s", err, hsm.PINEnv)
	}
}

// FuzzParseURI checks that ParseURI never panics, that what it accepts
// prints in a form it accepts again with the same meaning, and that the
// printed form never carries the PIN value.
func FuzzParseURI(f *testing.F) {
	f.Add("pkcs11:token=rootgate;object=issuing-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/rootgate/pin")
	f.Add("pkcs11:token=My%20Token;id=%01%02%FF;slot-id=7?pin-value=1234")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := hsm.ParseURI(s)
		if err != nil {
			return
		}
		out := u.String()
		again, err := hsm.ParseURI(out)
		if err != nil {
			t.Fatalf("ParseURI(%q) ok, but its String %q does not parse: %v", s, out, err)
		}
		want := *u
		if want.PinValue != "" {
			want.PinValue = "REDACTED"
		}
		if len(want.ID) == 0 {
			want.ID = nil
		}
		if !reflect.DeepEqual(*again, want) {
			t.Fatalf("round trip of %q via %q changed the URI", s, out)
		}
		if u.PinValue != "" && u.PinValue != "REDACTED" && strings.Contains(out, "pin-value="+u.PinValue) {
			t.Fatalf("String %q shows the PIN", out)
		}
	})
}

// TestPINSourceRefusals: a PIN that cannot be read is ErrPINSource (and
// so ErrPIN, never retried), with a message that says the PIN could not be
// read rather than that the token refused it; a PIN file readable by group
// or others is refused like an SSH key with loose permissions.
func TestPINSourceRefusals(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte("secret-pin-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(hsm.PINEnv, "")
	for _, tc := range []struct{ uri, want string }{
		{"pkcs11:token=a?pin-source=file:" + loose, "accessible to group or others (mode 0644)"},
		{"pkcs11:token=a?pin-source=file:" + filepath.Join(dir, "missing"), "no such file"},
		{"pkcs11:token=a?pin-source=env:RG_UNSET_PIN_VAR", "RG_UNSET_PIN_VAR"},
		{"pkcs11:token=a", hsm.PINEnv},
	} {
		u, err := hsm.ParseURI(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		_, err = u.ResolvePIN()
		if !errors.Is(err, hsm.ErrPINSource) || !errors.Is(err, hsm.ErrPIN) {
			t.Errorf("%s: %v, want ErrPINSource and ErrPIN", tc.uri, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "cannot read the PIN") || !strings.Contains(msg, tc.want) || strings.Contains(msg, "secret-pin-1234") {
			t.Errorf("%s: message %q", tc.uri, msg)
		}
	}
}
