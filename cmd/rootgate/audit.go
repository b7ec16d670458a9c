package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/inventory"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the hash-chained audit trail",
		Long: `Every enrollment attempt (accepted or refused, with its gRPC code and
reason) and every admin change is an event in the store's audit trail. Each
event's hash covers the previous event's hash, so any edit breaks the chain;
publish the head hash elsewhere to detect truncation too.`,
	}
	cmd.AddCommand(newAuditListCmd(), newAuditVerifyCmd())
	return cmd
}

func newAuditListCmd() *cobra.Command {
	var (
		sf        serverFlags
		filter    inventory.EventFilter
		limitFlag int
	)
	cmd := &cobra.Command{
		Use:   "list [--device ID] [--type T] [--limit N]",
		Short: "List audit events, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				filter.Limit = limitFlag
				evs, err := st.ListEvents(ctx, filter)
				if err != nil {
					return err
				}
				if asJSON {
					if evs == nil {
						evs = []*inventory.Event{}
					}
					return printJSON(cmd.OutOrStdout(), evs)
				}
				tw := newTable(cmd.OutOrStdout())
				fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tOUTCOME\tCODE\tDEVICE\tACTOR/PEER\tREASON")
				for _, e := range evs {
					who := e.Actor
					if who == "" {
						who = e.Peer
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, formatTime(e.At), e.Type, e.Outcome,
						orDash(e.Code), orDash(e.DeviceID), orDash(who), orDash(e.Reason))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d event(s)\n", len(evs))
				return nil
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&filter.DeviceID, "device", "", "only events of this device ID")
	cmd.Flags().StringVar(&filter.Type, "type", "", "only events of this type (e.g. enrollment.refused)")
	cmd.Flags().IntVar(&limitFlag, "limit", 100, "at most this many events (-1: all)")
	return cmd
}

// auditVerifyJSON is `rootgate audit verify -o json`.
type auditVerifyJSON struct {
	OK       bool   `json:"ok"`
	Events   int64  `json:"events"`
	HeadHash string `json:"head_hash"`
	Error    string `json:"error,omitempty"`
}

func newAuditVerifyCmd() *cobra.Command {
	var sf serverFlags
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit trail's hash chain and print its head",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				verr := st.VerifyAuditChain(ctx)
				seq, head, err := st.AuditHead(ctx)
				if err != nil {
					return err
				}
				res := auditVerifyJSON{OK: verr == nil, Events: seq, HeadHash: hex.EncodeToString(head)}
				if verr != nil {
					res.Error = verr.Error()
				}
				if asJSON {
					if err := printJSON(cmd.OutOrStdout(), res); err != nil {
						return err
					}
				} else if verr == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "audit trail intact: %d events, head %s\n", seq, res.HeadHash)
				}
				if verr != nil {
					return fmt.Errorf("audit trail broken: %w", verr)
				}
				return nil
			})
		},
	}
	sf.register(cmd)
	return cmd
}
