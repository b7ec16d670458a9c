package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/inventory"
)

func newTokensCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tokens",
		Short: "Create, list and revoke one-time enrollment tokens",
		Long: `Enrollment tokens admit a device in token mode. A token is used once, expires,
and may be bound to one EK fingerprint. Only a hash of the secret is stored:
the secret is printed once, by "tokens create". The commands work on
<data-dir>/rootgate.db directly; the actor in the audit trail is "cli:$USER".`,
	}
	cmd.AddCommand(newTokensCreateCmd(), newTokensListCmd(), newTokensRevokeCmd())
	return cmd
}

type tokenCreateJSON struct {
	Secret string           `json:"secret"`
	Token  *inventory.Token `json:"token"`
}

func newTokensCreateCmd() *cobra.Command {
	var sf serverFlags
	var ttl time.Duration
	var fp string
	var labels []string
	cmd := &cobra.Command{
		Use:   "create [--ttl 24h] [--ek-fingerprint FP] [--label k=v]...",
		Short: "Create a one-time enrollment token and print its secret (shown only once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 {
				return fmt.Errorf("--ttl %s: must be positive", ttl)
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				secret, tok, err := st.CreateToken(ctx, inventory.TokenParams{TTL: ttl, EKFingerprint: fp, Labels: lbl, Actor: cliActor()})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), tokenCreateJSON{Secret: secret, Token: tok})
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "%s\n\n", secret)
				tw := newTable(w)
				fmt.Fprintf(tw, "ID\t%s\n", tok.ID)
				fmt.Fprintf(tw, "Expires\t%s (in %s)\n", formatTime(tok.ExpiresAt), ttl)
				fmt.Fprintf(tw, "Bound to EK\t%s\n", orDash(tok.EKFingerprint))
				fmt.Fprintf(tw, "Labels\t%s\n", formatLabels(tok.Labels))
				tw.Flush()
				fmt.Fprintf(w, "\ncreated token %s: the secret above is shown only once; give it to the device in a file "+
					"(`rootgate agent enroll --token-file FILE`) or in $ROOTGATE_ENROLL_TOKEN, not with --token, which shows in ps\n", tok.ID)
				return nil
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().DurationVar(&ttl, "ttl", inventory.DefaultTokenTTL, "how long the token stays valid")
	cmd.Flags().StringVar(&fp, "ek-fingerprint", "", "bind the token to this EK fingerprint (64 hex digits)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label key=value copied onto the enrolled device (repeatable)")
	return cmd
}

func newTokensListCmd() *cobra.Command {
	var sf serverFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrollment tokens (never their secrets), newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				toks, err := st.ListTokens(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					if toks == nil {
						toks = []*inventory.Token{}
					}
					return printJSON(cmd.OutOrStdout(), toks)
				}
				printTokens(cmd.OutOrStdout(), toks)
				return nil
			})
		},
	}
	sf.register(cmd)
	return cmd
}

func printTokens(w io.Writer, toks []*inventory.Token) {
	valid := 0
	if len(toks) > 0 {
		tw := newTable(w)
		fmt.Fprintln(tw, "ID\tSTATUS\tEXPIRES\tBOUND EK\tUSED BY\tCREATED BY\tLABELS")
		for _, t := range toks {
			bound := "-"
			if t.EKFingerprint != "" {
				bound = t.EKFingerprint[:16] + "…"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Status, formatTime(t.ExpiresAt), bound,
				orDash(t.UsedBy), orDash(t.CreatedBy), formatLabels(t.Labels))
			if t.Status == inventory.TokenValid {
				valid++
			}
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "%d token(s), %d still valid\n", len(toks), valid)
}

func newTokensRevokeCmd() *cobra.Command {
	var sf serverFlags
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an unused enrollment token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				if err := st.RevokeToken(ctx, args[0], cliActor()); err != nil {
					return err
				}
				tok, err := st.GetToken(ctx, args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), tok)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked token %s\n", tok.ID)
				return nil
			})
		},
	}
	sf.register(cmd)
	return cmd
}
