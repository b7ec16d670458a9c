// Package ca issues Rootgate's X.509 certificates with a CA key held in an
// HSM (any crypto.Signer): it bootstraps a self-signed root or an
// intermediate signed by an offline root, applies the device and server leaf
// templates (SPIFFE URI SAN, TCG permanentIdentifier, lifetimes, random
// serials) and writes every issued certificate to a Journal before returning
// it.
package ca
