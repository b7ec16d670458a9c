package ca

import (
	"context"
	"time"
)

// Journal records every certificate the CA issues. An Issuer calls
// RecordIssuance before it hands a certificate out and treats an error as a
// failed issuance: the certificate is discarded and never returned.
// RecordIssuance must return only once the record is durably committed, and
// must be safe for concurrent use; an implementation that group-commits
// concurrent calls (as *inventory.Store does) keeps parallel issuance from
// being bound by one durable commit per certificate.
//
// *inventory.Store implements Journal; ca never imports inventory.
type Journal interface {
	RecordIssuance(ctx context.Context, rec IssuanceRecord) error
}

// Kinds of issued certificates, as written in IssuanceRecord.Kind.
const (
	KindDevice = "device"
	KindServer = "server"
	KindAdmin  = "admin"
)

// IssuanceRecord describes one issued certificate.
type IssuanceRecord struct {
	// Serial is the certificate serial number in lowercase hexadecimal,
	// without leading zeros or separators (big.Int.Text(16)).
	Serial string
	// Kind is KindDevice, KindServer or KindAdmin.
	Kind string
	// DeviceID is the device the certificate identifies; empty unless Kind
	// is KindDevice.
	DeviceID string
	// Subject names what the certificate identifies: a device's SPIFFE ID,
	// a server's first DNS name (or IP address).
	Subject string
	// NotBefore and NotAfter are the certificate's validity window.
	NotBefore, NotAfter time.Time
	// DER is the whole certificate.
	DER []byte
}
