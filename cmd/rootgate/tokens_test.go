package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/inventory"
)

// secretRE is the documented form of a token secret: "rgt_" and 32
// lowercase base32 characters (160 random bits).
var secretRE = regexp.MustCompile(`^rgt_[a-z2-7]{32}$`)

func TestTokens(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.softCA()
	fp := ekFingerprint(t, newP256(t).Public())

	var none []json.RawMessage
	s.json(&none, "tokens", "list")
	if none == nil || len(none) != 0 {
		t.Errorf("tokens list on an empty store: %v, want []", none)
	}

	// create -o json: {"secret", "token": {...}}.
	before := time.Now().Add(-time.Second)
	r := s.run("tokens", "create", "--ttl", "2h", "--label", "site=lab", "-o", "json")
	var created struct {
		Secret string          `json:"secret"`
		Token  json.RawMessage `json:"token"`
	}
	decode(t, r, &created)
	wantKeys(t, json.RawMessage(r.stdout), []string{"secret", "token"})
	wantKeys(t, created.Token, []string{"id", "labels", "created_by", "created_at", "expires_at", "status"})
	var tok1 inventory.Token
	if err := json.Unmarshal(created.Token, &tok1); err != nil {
		t.Fatal(err)
	}
	if !secretRE.MatchString(created.Secret) {
		t.Errorf("secret %q is not rgt_ and 32 base32 characters", created.Secret)
	}
	if tok1.ID == "" || tok1.Status != inventory.TokenValid || tok1.CreatedBy != "cli:"+testUser || tok1.Labels["site"] != "lab" ||
		tok1.CreatedAt.Before(before) || tok1.ExpiresAt.Sub(tok1.CreatedAt) != 2*time.Hour {
		t.Errorf("tokens create: %+v", tok1)
	}
	if strings.Contains(tok1.ID, created.Secret[4:]) {
		t.Errorf("token ID %q contains the secret", tok1.ID)
	}

	// Bound to an EK, in text: the secret first, alone on its line.
	r = ok(t, s.run("tokens", "create", "--ek-fingerprint", strings.ToUpper(fp)))
	secret2, _, _ := strings.Cut(r.stdout, "\n")
	if !secretRE.MatchString(secret2) || !strings.Contains(r.stdout, "Bound to EK  "+fp) || !strings.Contains(r.stdout, "shown only once") {
		t.Errorf("tokens create text: %s", r)
	}
	// The hint names the ways that keep the secret out of ps, not --token.
	if !strings.Contains(r.stdout, "--token-file") || !strings.Contains(r.stdout, "$ROOTGATE_ENROLL_TOKEN") ||
		strings.Contains(r.stdout, "enroll --token`") {
		t.Errorf("tokens create hint: %s", r)
	}

	// list: newest first, never a secret.
	secrets := []string{created.Secret, secret2, created.Secret[4:], secret2[4:]}
	r = s.run("tokens", "list", "-o", "json")
	var list []json.RawMessage
	decode(t, r, &list)
	if len(list) != 2 {
		t.Fatalf("tokens list: %d tokens, want 2", len(list))
	}
	wantKeys(t, list[0], []string{"id", "ek_fingerprint", "created_by", "created_at", "expires_at", "status"})
	var toks []inventory.Token
	if err := json.Unmarshal([]byte(r.stdout), &toks); err != nil {
		t.Fatal(err)
	}
	if toks[1].ID != tok1.ID || toks[0].EKFingerprint != fp || toks[0].Status != inventory.TokenValid {
		t.Errorf("tokens list: %+v, want the bound token first, then %s", toks, tok1.ID)
	}
	text := ok(t, s.run("tokens", "list")).stdout
	if !strings.Contains(text, "2 token(s), 2 still valid") || !strings.Contains(text, tok1.ID) {
		t.Errorf("tokens list text:\n%s", text)
	}
	for _, sec := range secrets {
		if strings.Contains(r.stdout+text, sec) {
			t.Errorf("tokens list shows a secret:\n%s\n%s", r.stdout, text)
		}
	}

	// revoke: once, and only known tokens.
	var revoked inventory.Token
	s.json(&revoked, "tokens", "revoke", tok1.ID)
	if revoked.ID != tok1.ID || revoked.Status != inventory.TokenRevoked || revoked.RevokedAt.IsZero() {
		t.Errorf("tokens revoke: %+v", revoked)
	}
	fails(t, s.run("tokens", "revoke", tok1.ID), "already revoked")
	fails(t, s.run("tokens", "revoke", "tok_nosuchtoken"), "not found")
	fails(t, s.run("tokens", "revoke"), "accepts 1 arg(s), received 0")
	if text := ok(t, s.run("tokens", "list")).stdout; !strings.Contains(text, "2 token(s), 1 still valid") {
		t.Errorf("tokens list after revoke:\n%s", text)
	}

	// Bad input: nothing created.
	fails(t, s.run("tokens", "create", "--ttl", "0s"), "--ttl 0s: must be positive")
	fails(t, s.run("tokens", "create", "--ttl", "-1h"), "must be positive")
	fails(t, s.run("tokens", "create", "--ttl", "soon"), `invalid argument "soon" for "--ttl"`)
	fails(t, s.run("tokens", "create", "--ek-fingerprint", "abc"), `EK fingerprint "abc" is not 64 hex digits`)
	fails(t, s.run("tokens", "create", "--label", "=x"), `label "=x": want key=value`)
	s.json(&toks, "tokens", "list")
	if len(toks) != 2 {
		t.Errorf("after refused creates: %d tokens, want 2", len(toks))
	}
}
