package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConfig writes YAML into a new file and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rootgate.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigUnknownKey: a misspelt key is an error naming the key and the
// file, for every command that reads a configuration, before anything is
// opened or created.
func TestConfigUnknownKey(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct {
		name, yaml, key string
	}{
		{"top level", "data_dir: " + dataDir + "\ndata_dri: /tmp/x\n", "data_dri"},
		{"nested", "data_dir: " + dataDir + "\nenroll:\n  lisen: 127.0.0.1:1\n", "lisen"},
		{"hsm", "data_dir: " + dataDir + "\nhsm:\n  pin: \"pin-in-yaml-5501\"\n", "pin"},
	} {
		cfg := writeConfig(t, tc.yaml)
		for _, args := range [][]string{
			{"server"},
			{"devices", "list"},
			{"devices", "register", "--ek-fingerprint", strings.Repeat("ab", 32)},
			{"tokens", "create"},
			{"ca", "init"},
			{"ca", "show"},
		} {
			t.Run(tc.name+"/"+strings.Join(args[:min(2, len(args))], "_"), func(t *testing.T) {
				r := run(t, nil, []string{"pin-in-yaml-5501"}, append(args, "--config", cfg)...)
				fails(t, r, "field "+tc.key+" not found", cfg)
			})
		}
	}
	if _, err := os.Stat(dataDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused configuration created the data directory (err %v)", err)
	}

	agentCfg := writeConfig(t, "state_dir: /tmp/x\nrenew_befor: 1h\n")
	fails(t, run(t, nil, nil, "agent", "status", "--config", agentCfg), "field renew_befor not found", agentCfg)
	fails(t, run(t, nil, nil, "agent", "enroll", "--config", agentCfg), "field renew_befor not found")
	// A server key is not an agent key.
	fails(t, run(t, nil, nil, "agent", "status", "--config", writeConfig(t, "data_dir: /tmp/x\n")), "field data_dir not found")
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"two documents", "trust_domain: a.example\n---\ntrust_domain: b.example\n", []string{"more than one YAML document"}},
		{"duration without unit", "ca:\n  max_lifetime: 7\n", []string{"line 2", `missing unit in duration "7"`}},
		{"duration not a scalar", "ca:\n  max_lifetime: [1h]\n", []string{"line 2", "duration must be a string"}},
		{"unparsable duration", "ca:\n  max_lifetime: \"a week\"\n", []string{"line 2", "a week"}},
		{"not YAML", "data_dir: [\n", []string{"yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := writeConfig(t, tc.yaml)
			fails(t, run(t, nil, nil, "tokens", "list", "--config", cfg), append(tc.want, cfg)...)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		missing := filepath.Join(t.TempDir(), "nope.yaml")
		fails(t, run(t, nil, nil, "devices", "list", "--config", missing), "config:", missing, "no such file")
	})
}

// TestConfigFlagsOverrideFile: a flag beats the file; the file beats the
// default.
func TestConfigFlagsOverrideFile(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	fileDir := filepath.Join(t.TempDir(), "filedata")
	flagDir := filepath.Join(t.TempDir(), "flagdata")
	softCA(t, fileDir, s.trustDomain)
	softCA(t, flagDir, s.trustDomain)
	fileCfg := writeConfig(t, "data_dir: "+fileDir+"\n")

	// data_dir: the file's, unless --data-dir says otherwise.
	ok(t, run(t, nil, nil, "tokens", "create", "--config", fileCfg))
	ok(t, run(t, nil, nil, "tokens", "create", "--config", fileCfg, "--data-dir", flagDir))
	ok(t, run(t, nil, nil, "tokens", "create", "--config", fileCfg, "--data-dir", flagDir))
	for dir, want := range map[string]int{fileDir: 1, flagDir: 2} {
		if _, err := os.Stat(filepath.Join(dir, "rootgate.db")); err != nil {
			t.Fatalf("no store in %s: %v", dir, err)
		}
		var toks []map[string]any
		decode(t, run(t, nil, nil, "tokens", "list", "-o", "json", "--data-dir", dir), &toks)
		if len(toks) != want {
			t.Errorf("%s holds %d tokens, want %d", dir, len(toks), want)
		}
	}

	// hsm.uri: a broken URI in the file, the right one on the command line
	// (its PIN from the environment: a PIN is never a flag value).
	broken := s.configWithURI(strings.Replace(s.uri(), "token="+s.tok.Label, "token=no-such-token", 1))
	if err := os.WriteFile(broken, append(readFile(t, broken), []byte("ca:\n  common_name: From File\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	fails(t, run(t, nil, s.secrets(), "ca", "init", "--config", broken), "no-such-token")
	flagURI := strings.Replace(s.uri(), "&pin-value="+s.tok.PIN, "&pin-source=env:CLI_TEST_PIN", 1)
	var res caInitJSON
	decode(t, run(t, []string{"CLI_TEST_PIN=" + s.tok.PIN}, s.secrets(),
		"ca", "init", "-o", "json", "--config", broken, "--hsm", flagURI), &res)
	if res.Status != "created" || res.Key.Label != s.label || res.Chain[0].Subject != "CN=From File" {
		t.Errorf("ca init with --hsm over a broken file: %+v", res)
	}
	// --common-name beats ca.common_name only for a new CA; here the CA exists.
	decode(t, run(t, []string{"CLI_TEST_PIN=" + s.tok.PIN}, s.secrets(),
		"ca", "init", "-o", "json", "--config", broken, "--hsm", flagURI, "--common-name", "From Flag"), &res)
	if res.Status != "exists" || res.Chain[0].Subject != "CN=From File" {
		t.Errorf("ca init again with --common-name: %+v", res)
	}

	// Agent: --state-dir beats state_dir.
	agentCfg := writeConfig(t, "state_dir: /nonexistent/from-file\n")
	flagState := t.TempDir()
	// (Not enrolled: exit status 2, the status printed all the same.)
	r := run(t, nil, nil, "agent", "status", "--config", agentCfg, "--state-dir", flagState)
	if r.code != 2 || !strings.Contains(r.stdout, "not enrolled ("+flagState+")") {
		t.Errorf("agent status --state-dir: %s", r)
	}
	r = run(t, nil, nil, "agent", "status", "--config", agentCfg)
	if r.code != 2 || !strings.Contains(r.stdout, "not enrolled (/nonexistent/from-file)") {
		t.Errorf("agent status with state_dir from the file: %s", r)
	}
}
