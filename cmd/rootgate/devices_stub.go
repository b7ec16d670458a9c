package main

import "github.com/spf13/cobra"

// TEMPORARY: replaced by devices.go.
func newDevicesCmd() *cobra.Command { return &cobra.Command{Use: "devices", Hidden: true} }
