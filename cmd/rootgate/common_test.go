package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// In-process tests of the command tree, for what needs no process.

func TestPrintJSON(t *testing.T) {
	var buf bytes.Buffer
	v := map[string]string{"uri": "pkcs11:token=a;object=b?module-path=/m.so&pin-source=file:/p", "subject": "CN=<A & B>"}
	if err := printJSON(&buf, v); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"&pin-source", "CN=<A & B>", "\n  \"subject\""} {
		if !strings.Contains(out, want) {
			t.Errorf("printJSON output lacks %q:\n%s", want, out)
		}
	}
	var back map[string]string
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back["uri"] != v["uri"] || back["subject"] != v["subject"] {
		t.Errorf("printJSON output does not decode to its input: %v, %v", back, err)
	}
}

func TestParseValidity(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"10y": 10 * 365 * 24 * time.Hour, "3650d": 3650 * 24 * time.Hour, "87600h": 87600 * time.Hour, "90m": 90 * time.Minute,
	} {
		if got, err := parseValidity(in); err != nil || got != want {
			t.Errorf("parseValidity(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0d", "-1d", "xd", "1.5y", "0s", "-5h", "ten years"} {
		if got, err := parseValidity(in); err == nil {
			t.Errorf("parseValidity(%q) = %s, want an error", in, got)
		}
	}
}

// execute runs the command tree in process and returns stdout, stderr
// and the error.
func execute(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var stdout, stderr bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return stdout.String(), stderr.String(), err
}

func TestRootCmdInProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	// No CA there: refused, nothing created.
	if _, _, err := execute(t, "devices", "list", "-o", "json", "--data-dir", dir); err == nil ||
		err.Error() != "no Rootgate CA in "+dir+": run 'rootgate ca init' or check --data-dir" {
		t.Errorf("devices list on a data dir without a CA: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused command created %s (err %v)", dir, err)
	}
	softCA(t, dir, "inproc.test")
	out, _, err := execute(t, "devices", "list", "-o", "json", "--data-dir", dir)
	if err != nil || out != "[]\n" {
		t.Errorf("devices list -o json on a new store: %q, %v; want []", out, err)
	}
	out, _, err = execute(t, "tokens", "create", "-o", "json", "--data-dir", dir, "--label", "a=b&c")
	var created tokenCreateJSON
	if err != nil || json.Unmarshal([]byte(out), &created) != nil || created.Token.Labels["a"] != "b&c" || !strings.Contains(out, `"b&c"`) {
		t.Errorf("tokens create: %q, %v", out, err)
	}
	if _, _, err := execute(t, "tokens", "list", "-o", "yaml", "--data-dir", dir); err == nil ||
		!strings.Contains(err.Error(), `unknown output format "yaml"`) {
		t.Errorf("tokens list -o yaml: %v", err)
	}
	if _, _, err := execute(t, "frobnicate"); err == nil || !strings.Contains(err.Error(), `unknown command "frobnicate"`) {
		t.Errorf("an unknown command: %v", err)
	}
	if _, _, err := execute(t, "tokens", "list", "--no-such-flag"); err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("an unknown flag: %v", err)
	}
}
