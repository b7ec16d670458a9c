package main

import (
	"context"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/inventory"
)

// deviceKeys are the JSON keys of a device as documented in
// docs/architecture.md (inventory.Device), for a device that has not
// enrolled: no EK or AK material, PCRs, certificate or enrollment time.
var deviceKeys = []string{"created_at", "ek_fingerprint", "id", "state", "updated_at"}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, raw)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// wantKeys fails unless the JSON object raw has exactly want and optional.
func wantKeys(t *testing.T, raw json.RawMessage, want []string, optional ...string) {
	t.Helper()
	var got []string
	for _, k := range keysOf(t, raw) {
		if !slices.Contains(optional, k) {
			got = append(got, k)
		}
	}
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Errorf("JSON keys %v, want %v (optional %v):\n%s", keysOf(t, raw), w, optional, raw)
	}
}

func TestDevicesLifecycle(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.softCA()
	ek := newP256(t)
	fp := ekFingerprint(t, ek.Public())
	// The documented device ID: lowercase base32 of the first 20 bytes of
	// the fingerprint's SHA-256, no padding.
	sum, _ := hex.DecodeString(fp)
	wantID := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:20]))
	if id, err := attestor.DeviceID(ek.Public()); err != nil || id != wantID {
		t.Fatalf("attestor.DeviceID = %q, %v; documented form gives %q", id, err, wantID)
	}

	var empty []json.RawMessage
	s.json(&empty, "devices", "list")
	if empty == nil || len(empty) != 0 {
		t.Errorf("devices list on an empty store: %v, want []", empty)
	}
	if r := ok(t, s.run("devices", "list")); !strings.Contains(r.stdout, "0 device(s)") {
		t.Errorf("devices list text on an empty store: %s", r)
	}

	var raw json.RawMessage
	before := time.Now().Add(-time.Second)
	s.json(&raw, "devices", "register", "--ek-fingerprint", strings.ToUpper(fp), "--label", "site=lab", "--label", "rack=7")
	wantKeys(t, raw, append(deviceKeys, "labels"))
	var d inventory.Device
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if d.ID != wantID || d.EKFingerprint != fp || d.State != inventory.StateRegistered ||
		d.Labels["site"] != "lab" || d.Labels["rack"] != "7" || d.CreatedAt.Before(before) || d.CreatedAt.After(time.Now()) {
		t.Errorf("devices register: %+v", d)
	}

	// Invalid transitions of a registered device.
	fails(t, s.run("devices", "approve", d.ID), "cannot approve a device in state registered")
	fails(t, s.run("devices", "register", "--ek-fingerprint", fp), "conflict", "already known in state registered")

	// reject -> approve -> revoke, by ID and by EK fingerprint.
	var after inventory.Device
	s.json(&after, "devices", "reject", fp, "--reason", "unknown rack")
	if after.State != inventory.StateRejected || after.StateReason != "unknown rack" {
		t.Errorf("after reject: %+v", after)
	}
	r := ok(t, s.run("devices", "approve", d.ID))
	if want := "device " + d.ID + " approved: rejected -> registered"; !strings.Contains(r.stdout, want) {
		t.Errorf("devices approve text: want %q in %s", want, r)
	}
	s.json(&after, "devices", "revoke", d.ID, "--reason", "decommissioned")
	if after.State != inventory.StateRevoked || after.StateReason != "decommissioned" {
		t.Errorf("after revoke: %+v", after)
	}
	for _, verb := range []string{"approve", "reject", "revoke"} {
		fails(t, s.run("devices", verb, d.ID), "cannot "+verb+" a device in state revoked")
	}
	fails(t, s.run("devices", "register", "--ek-fingerprint", fp), "already known in state revoked")

	// show: the device, no certificates, its events newest first.
	var show struct {
		Device       json.RawMessage   `json:"device"`
		Certificates []json.RawMessage `json:"certificates"`
		Events       []inventory.Event `json:"events"`
	}
	rs := s.run("devices", "show", fp, "-o", "json")
	decode(t, rs, &show)
	wantKeys(t, json.RawMessage(rs.stdout), []string{"device", "certificates", "events"})
	wantKeys(t, show.Device, append(deviceKeys, "labels", "state_reason"))
	if show.Certificates == nil || len(show.Certificates) != 0 {
		t.Errorf("devices show certificates: %v, want []", show.Certificates)
	}
	var types []string
	for _, e := range show.Events {
		types = append(types, e.Type)
		if e.DeviceID != d.ID || e.Actor != "cli:"+testUser || e.Outcome != "accepted" {
			t.Errorf("event %+v: want device %s, actor cli:%s, outcome accepted", e, d.ID, testUser)
		}
	}
	if want := []string{"device.revoked", "device.approved", "device.rejected", "device.registered"}; !slices.Equal(types, want) {
		t.Errorf("events %v, want %v", types, want)
	}
	if show.Events[0].Reason != "decommissioned" {
		t.Errorf("revoke event reason %q", show.Events[0].Reason)
	}
	text := ok(t, s.run("devices", "show", d.ID)).stdout
	for _, want := range []string{d.ID, "revoked", "decommissioned", fp, "rack=7,site=lab", "Certificates (0)", "Recent events (4, newest first)", "device.registered"} {
		if !strings.Contains(text, want) {
			t.Errorf("devices show text lacks %q:\n%s", want, text)
		}
	}

	// Unknown devices and malformed input.
	fails(t, s.run("devices", "show", "nosuchdevice"), "not found")
	fails(t, s.run("devices", "approve", strings.Repeat("ab", 32)), "not found")
	fails(t, s.run("devices", "register", "--ek-fingerprint", "xyz"), "EK fingerprint \"xyz\" is not 64 hex digits")
	fails(t, s.run("devices", "register"), `required flag(s) "ek-fingerprint" not set`)
	fails(t, s.run("devices", "register", "--ek-fingerprint", strings.Repeat("cd", 32), "--label", "novalue"), `label "novalue": want key=value`)
	fails(t, s.run("devices", "show"), "accepts 1 arg(s), received 0")
}

// TestDevicesApprovalQueue: a device the enrollment service queued (pending)
// is approved or rejected with the CLI.
func TestDevicesApprovalQueue(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.softCA()
	ok(t, s.run("devices", "list")) // creates the store
	ctx := context.Background()
	st, err := inventory.Open(ctx, filepath.Join(s.dataDir, "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	var fps []string
	for range 3 {
		fp := ekFingerprint(t, newP256(t).Public())
		fps = append(fps, fp)
		if _, err := st.QueueForApproval(ctx, &inventory.Device{EKFingerprint: fp, Facts: map[string]string{"hostname": "box"}}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	var pending []inventory.Device
	s.json(&pending, "devices", "list", "--state", "pending")
	if len(pending) != 3 {
		t.Fatalf("devices list --state pending: %d devices, want 3", len(pending))
	}
	for i, d := range pending {
		if d.State != inventory.StatePending || d.EKFingerprint != fps[i] || d.Facts["hostname"] != "box" {
			t.Errorf("pending[%d] = %+v, want %s pending (oldest first)", i, d, fps[i])
		}
	}
	var limited []inventory.Device
	s.json(&limited, "devices", "list", "--limit", "2")
	if len(limited) != 2 {
		t.Errorf("devices list --limit 2: %d devices", len(limited))
	}

	var d inventory.Device
	s.json(&d, "devices", "approve", fps[0])
	if d.State != inventory.StateRegistered {
		t.Errorf("approve a pending device: state %s, want registered", d.State)
	}
	s.json(&d, "devices", "reject", fps[1], "--reason", "not ours")
	if d.State != inventory.StateRejected || d.StateReason != "not ours" {
		t.Errorf("reject a pending device: %+v", d)
	}
	s.json(&d, "devices", "revoke", fps[2])
	if d.State != inventory.StateRevoked {
		t.Errorf("revoke a pending device: state %s", d.State)
	}

	text := ok(t, s.run("devices", "list")).stdout
	if !strings.Contains(text, "3 device(s): 1 registered, 1 rejected, 1 revoked") {
		t.Errorf("devices list summary:\n%s", text)
	}
	fails(t, s.run("devices", "list", "--state", "bogus"), "bogus")
}

// TestOutputFormat: -o takes text or json; anything else is an error
// before any work is done.
func TestOutputFormat(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	for _, args := range [][]string{
		{"devices", "list"},
		{"devices", "register", "--ek-fingerprint", strings.Repeat("ef", 32)},
		{"tokens", "list"},
		{"tokens", "create"},
		{"ca", "show"},
		{"ca", "init"},
		{"server"},
	} {
		fails(t, s.run(append(args, "-o", "yaml")...), `unknown output format "yaml" (want text or json)`)
	}
	// Nothing was done: no data directory at all.
	if _, err := os.Stat(s.dataDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after -o yaml: data directory %s exists (err %v)", s.dataDir, err)
	}
	fails(t, s.run("ca", "show"), "no Rootgate CA in "+s.dataDir)
	s.softCA()
	var devs []inventory.Device
	s.json(&devs, "devices", "list")
	var toks []inventory.Token
	s.json(&toks, "tokens", "list")
	if len(devs) != 0 || len(toks) != 0 {
		t.Errorf("after -o yaml: %d devices, %d tokens; want none", len(devs), len(toks))
	}
	// JSON is accepted in any case, like text.
	ok(t, s.run("devices", "list", "-o", "JSON"))
	ok(t, s.run("devices", "list", "--output", "text"))
}
