package ca

import (
	"context"
	"time"
)

// Journal records every certificate the CA issues. An Issuer calls
// RecordIssuance before it hands a certificate out and treats an error as a
// failed issuance: the certificate is discarded and never returned.
// RecordIssuance must return only once the record is durably committed.
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
	// Subject is the certificate's subject DN in RFC 2253 form, or for a
	// device its SPIFFE ID.
	Subject string
	// NotBefore and NotAfter are the certificate's validity window.
	NotBefore, NotAfter time.Time
	// DER is the whole certificate.
	DER []byte
}
