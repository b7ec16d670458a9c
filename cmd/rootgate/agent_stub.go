package main

import "github.com/spf13/cobra"

// TEMPORARY: replaced by agent.go.
func newAgentCmd() *cobra.Command { return &cobra.Command{Use: "agent", Hidden: true} }
