package main

import "github.com/spf13/cobra"

// TEMPORARY: replaced by ca.go.
func newCACmd() *cobra.Command { return &cobra.Command{Use: "ca", Hidden: true} }
