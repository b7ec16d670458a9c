package hsm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
)

// PINEnv is the environment variable read for the user PIN when the URI
// carries neither pin-value nor pin-source.
const PINEnv = "ROOTGATE_HSM_PIN"

// redacted replaces the PIN value wherever a URI is printed.
const redacted = "REDACTED"

// maxPINFile bounds how much of a pin-source file is read.
const maxPINFile = 4096

// URI is a parsed RFC 7512 PKCS#11 URI naming a token, optionally a key in
// it, the module that reaches it and where its PIN comes from.
//
// Its String method, its GoString method and its slog value never contain
// the PIN value.
type URI struct {
	// Token is the token label (path attribute "token").
	Token string
	// Manufacturer, Model and Serial must match the token's when set.
	Manufacturer, Model, Serial string
	// SlotID selects the slot (path attribute "slot-id") when not nil.
	SlotID *int
	// Object is the key label (path attribute "object").
	Object string
	// ID is the key's CKA_ID (path attribute "id", percent-encoded bytes).
	ID []byte
	// ModulePath is the PKCS#11 module to load (query attribute "module-path").
	ModulePath string
	// PinSource says where to read the PIN (query attribute "pin-source"):
	// "file:/path", a plain absolute path, or "env:NAME".
	PinSource string
	// PinValue is the PIN itself (query attribute "pin-value"); meant for
	// tests, since a URI tends to end up in process listings and logs.
	PinValue string
}

// ParseURI parses an RFC 7512 PKCS#11 URI such as
//
//	pkcs11:token=rootgate;object=issuing-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/rootgate/pin
//
// Path attributes token, manufacturer, model, serial, slot-id, object, id
// and type=private are understood; query attributes module-path,
// pin-source and pin-value. Attributes prefixed "x-" are ignored; any other
// attribute, a repeated attribute, a malformed percent-encoding or a
// character RFC 7512 does not allow is an error. Errors never quote a
// pin-value.
func ParseURI(s string) (*URI, error) {
	const scheme = "pkcs11:"
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		return nil, errors.New(`hsm: parse URI: scheme is not "pkcs11:"`)
	}
	rest := s[len(scheme):]
	path, query, hasQuery := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				return nil, fmt.Errorf("hsm: parse URI: path attribute %q is not name=value", clip(attr))
			}
			if seen[name] {
				return nil, fmt.Errorf("hsm: parse URI: attribute %q repeated", clip(name))
			}
			seen[name] = true
			val, err := unescape(raw, isPathChar)
			if err != nil {
				return nil, fmt.Errorf("hsm: parse URI: attribute %q: %w", clip(name), err)
			}
			if err := u.setPath(name, val); err != nil {
				return nil, err
			}
		}
	}
	if hasQuery && query != "" {
		for _, attr := range strings.Split(query, "&") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				if name == "pin-value" || strings.HasPrefix(attr, "pin-value") {
					return nil, errors.New("hsm: parse URI: malformed pin-value attribute")
				}
				return nil, fmt.Errorf("hsm: parse URI: query attribute %q is not name=value", clip(attr))
			}
			if seen[name] {
				return nil, fmt.Errorf("hsm: parse URI: attribute %q repeated", clip(name))
			}
			seen[name] = true
			val, err := unescape(raw, isQueryChar)
			if err != nil {
				if name == "pin-value" {
					return nil, errors.New("hsm: parse URI: attribute \"pin-value\": malformed value")
				}
				return nil, fmt.Errorf("hsm: parse URI: attribute %q: %w", clip(name), err)
			}
			if err := u.setQuery(name, val); err != nil {
				return nil, err
			}
		}
	}
	if u.PinValue != "" && u.PinSource != "" {
		return nil, errors.New("hsm: parse URI: pin-value and pin-source are both given")
	}
	return u, nil
}

func (u *URI) setPath(name, val string) error {
	switch name {
	case "token":
		u.Token = val
	case "manufacturer":
		u.Manufacturer = val
	case "model":
		u.Model = val
	case "serial":
		u.Serial = val
	case "object":
		u.Object = val
	case "id":
		u.ID = []byte(val)
	case "slot-id":
		n, err := parseDecimal(val)
		if err != nil {
			return fmt.Errorf("hsm: parse URI: slot-id %q: %w", clip(val), err)
		}
		u.SlotID = &n
	case "type":
		if val != "private" {
			return fmt.Errorf("hsm: parse URI: type %q: only private keys sign", clip(val))
		}
	default:
		if strings.HasPrefix(name, "x-") {
			return nil
		}
		return fmt.Errorf("hsm: parse URI: unsupported path attribute %q", clip(name))
	}
	return nil
}

func (u *URI) setQuery(name, val string) error {
	switch name {
	case "module-path":
		if val == "" {
			return errors.New("hsm: parse URI: module-path is empty")
		}
		u.ModulePath = val
	case "pin-value":
		if val == "" {
			return errors.New("hsm: parse URI: pin-value is empty")
		}
		u.PinValue = val
	case "pin-source":
		if err := checkPinSource(val); err != nil {
			return err
		}
		u.PinSource = val
	default:
		if strings.HasPrefix(name, "x-") {
			return nil
		}
		return fmt.Errorf("hsm: parse URI: unsupported query attribute %q", clip(name))
	}
	return nil
}

// checkPinSource accepts file:/abs, file:///abs, /abs and env:NAME.
func checkPinSource(src string) error {
	_, _, err := pinSource(src)
	return err
}

// pinSource splits a pin-source into its kind ("file" or "env") and target.
func pinSource(src string) (kind, target string, err error) {
	switch {
	case strings.HasPrefix(src, "env:"):
		name := src[len("env:"):]
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return "", "", fmt.Errorf("hsm: pin-source %q: bad environment variable name", clip(src))
		}
		return "env", name, nil
	case strings.HasPrefix(src, "file:"):
		p := src[len("file:"):]
		if strings.HasPrefix(p, "//") {
			p = p[2:] // file:///abs: empty authority
			if !strings.HasPrefix(p, "/") {
				return "", "", fmt.Errorf("hsm: pin-source %q: only local files", clip(src))
			}
		}
		if !strings.HasPrefix(p, "/") {
			return "", "", fmt.Errorf("hsm: pin-source %q: path must be absolute", clip(src))
		}
		return "file", p, nil
	case strings.HasPrefix(src, "/"):
		return "file", src, nil
	}
	return "", "", fmt.Errorf("hsm: pin-source %q: want file:/path or env:NAME", clip(src))
}

// ResolvePIN returns the user PIN: pin-value if set, else the contents of
// the pin-source file (one trailing newline removed) or environment
// variable, else the environment variable ROOTGATE_HSM_PIN. Errors wrap
// ErrPIN and name the source, never the PIN.
func (u *URI) ResolvePIN() (string, error) {
	if u.PinValue != "" {
		return u.PinValue, nil
	}
	if u.PinSource != "" {
		kind, target, err := pinSource(u.PinSource)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrPINSource, err)
		}
		if kind == "env" {
			pin, ok := os.LookupEnv(target)
			if !ok || pin == "" {
				return "", fmt.Errorf("%w: environment variable %s named by pin-source is not set", ErrPINSource, target)
			}
			return pin, nil
		}
		return readPINFile(target)
	}
	if pin := os.Getenv(PINEnv); pin != "" {
		return pin, nil
	}
	return "", fmt.Errorf("%w: the URI has no pin-source or pin-value and %s is not set", ErrPINSource, PINEnv)
}

// readPINFile reads a PIN file, which like an SSH private key must not be
// accessible to group or others.
func readPINFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: pin-source file: %w", ErrPINSource, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: pin-source file %s: %w", ErrPINSource, path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%w: pin-source file %s is accessible to group or others (mode %04o): chmod 600 it", ErrPINSource, path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return "", fmt.Errorf("%w: pin-source file %s: %w", ErrPINSource, path, err)
	}
	if len(b) > maxPINFile {
		return "", fmt.Errorf("%w: pin-source file %s is larger than %d bytes", ErrPINSource, path, maxPINFile)
	}
	pin := string(b)
	pin = strings.TrimSuffix(pin, "\n")
	pin = strings.TrimSuffix(pin, "\r")
	if pin == "" {
		return "", fmt.Errorf("%w: pin-source file %s is empty", ErrPINSource, path)
	}
	return pin, nil
}

// String returns the URI in RFC 7512 form with a pin-value replaced by
// "REDACTED".
func (u URI) String() string {
	var b strings.Builder
	b.WriteString("pkcs11:")
	sep := ""
	path := func(name, val string) {
		b.WriteString(sep)
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(escape(val, isPathChar))
		sep = ";"
	}
	if u.Token != "" {
		path("token", u.Token)
	}
	if u.Manufacturer != "" {
		path("manufacturer", u.Manufacturer)
	}
	if u.Model != "" {
		path("model", u.Model)
	}
	if u.Serial != "" {
		path("serial", u.Serial)
	}
	if u.SlotID != nil {
		path("slot-id", strconv.Itoa(*u.SlotID))
	}
	if u.Object != "" {
		path("object", u.Object)
	}
	if len(u.ID) > 0 {
		b.WriteString(sep)
		b.WriteString("id=")
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		sep = ";"
	}
	sep = "?"
	query := func(name, val string) {
		b.WriteString(sep)
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(escape(val, isQueryChar))
		sep = "&"
	}
	if u.ModulePath != "" {
		query("module-path", u.ModulePath)
	}
	if u.PinSource != "" {
		query("pin-source", u.PinSource)
	}
	if u.PinValue != "" {
		query("pin-value", redacted)
	}
	return b.String()
}

// GoString is String, so that %#v does not print the PIN either.
func (u URI) GoString() string { return "hsm.URI(" + strconv.Quote(u.String()) + ")" }

// LogValue makes slog print the redacted String.
func (u URI) LogValue() slog.Value { return slog.StringValue(u.String()) }

// Redacted returns a copy of u without its PIN value.
func (u *URI) Redacted() *URI {
	c := *u
	c.PinValue = ""
	c.ID = append([]byte(nil), u.ID...)
	if u.SlotID != nil {
		n := *u.SlotID
		c.SlotID = &n
	}
	return &c
}

// parseDecimal parses a slot ID: 1*DIGIT, no sign, within int range.
func parseDecimal(s string) (int, error) {
	if s == "" {
		return 0, errors.New("want decimal digits")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("want decimal digits")
		}
	}
	n, err := strconv.ParseInt(s, 10, strconv.IntSize)
	if err != nil {
		return 0, errors.New("out of range")
	}
	return int(n), nil
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// isPathChar reports whether c may appear unescaped in a path attribute
// value (RFC 7512 pk11-pchar).
func isPathChar(c byte) bool {
	return isUnreserved(c) || strings.IndexByte(":[]@!$'()*+,=&", c) >= 0
}

// isQueryChar reports whether c may appear unescaped in a query attribute
// value (RFC 7512 pk11-qchar).
func isQueryChar(c byte) bool {
	return isUnreserved(c) || strings.IndexByte(":[]@!$'()*+,=/?|;", c) >= 0
}

func unescape(s string, allowed func(byte) bool) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		for i := 0; i < len(s); i++ {
			if !allowed(s[i]) {
				return "", fmt.Errorf("character %q must be percent-encoded", s[i])
			}
		}
		return s, nil
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) {
				return "", errors.New("truncated percent-encoding")
			}
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return "", errors.New("bad percent-encoding")
			}
			out = append(out, hi<<4|lo)
			i += 2
		case allowed(c):
			out = append(out, c)
		default:
			return "", fmt.Errorf("character %q must be percent-encoded", c)
		}
	}
	return string(out), nil
}

func escape(s string, allowed func(byte) bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if allowed(c) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// clip shortens attacker-controlled text quoted in an error message.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
