package main

import "github.com/spf13/cobra"

// TEMPORARY: replaced by server.go.
func newServerCmd() *cobra.Command { return &cobra.Command{Use: "server", Hidden: true} }
