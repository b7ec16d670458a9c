package main

import "github.com/spf13/cobra"

// TEMPORARY: replaced by tokens.go.
func newTokensCmd() *cobra.Command { return &cobra.Command{Use: "tokens", Hidden: true} }
