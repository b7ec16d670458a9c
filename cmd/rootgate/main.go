// Command rootgate is Rootgate's one binary: the server (CA, enrollment,
// inventory), the device agent, and the admin commands. It only parses flags
// and configuration and wires the packages together.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rootgate:", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// exitCoder lets a command choose its exit status.
type exitCoder interface{ ExitCode() int }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "rootgate",
		Short:         "Hardware-rooted device identity: TPM enrollment, an HSM-backed CA, device inventory",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.PersistentFlags().StringP("output", "o", "text", "output format: text or json")
	root.AddCommand(
		newCACmd(),
		newServerCmd(),
		newDevicesCmd(),
		newTokensCmd(),
		newAuditCmd(),
		newAgentCmd(),
	)
	strictGroups(root)
	return root
}

// version reports the module version and VCS revision the binary was
// built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		// No module version stamped: fall back to the VCS revision.
		v = "devel"
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && len(s.Value) >= 12:
				v += " " + s.Value[:12]
			case s.Key == "vcs.modified" && s.Value == "true":
				v += "+dirty"
			}
		}
	}
	return v + " " + bi.GoVersion
}

// strictGroups makes every command group refuse an unknown subcommand
// (cobra only does that at the root): `rootgate devices aprove X` must
// fail, not print help and exit 0.
func strictGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.NoArgs
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
}
