package agent

import "testing"

func TestParseTPMDevice(t *testing.T) {
	good := []struct {
		in   string
		want TPMDevice
		str  string
	}{
		{"", TPMDevice{Kind: "device", Address: "/dev/tpmrm0"}, "/dev/tpmrm0"},
		{"/dev/tpm0", TPMDevice{Kind: "device", Address: "/dev/tpm0"}, "/dev/tpm0"},
		{"/dev//tpmrm0/", TPMDevice{Kind: "device", Address: "/dev/tpmrm0"}, "/dev/tpmrm0"},
		{"tcp://127.0.0.1:2321", TPMDevice{Kind: "tcp", Address: "127.0.0.1:2321"}, "tcp://127.0.0.1:2321"},
		{"tcp://[::1]:2321", TPMDevice{Kind: "tcp", Address: "[::1]:2321"}, "tcp://[::1]:2321"},
		{"tcp://localhost:2321/", TPMDevice{Kind: "tcp", Address: "localhost:2321"}, "tcp://localhost:2321"},
		{"unix:///run/swtpm/sock", TPMDevice{Kind: "unix", Address: "/run/swtpm/sock"}, "unix:///run/swtpm/sock"},
	}
	for _, tc := range good {
		got, err := ParseTPMDevice(tc.in)
		if err != nil {
			t.Errorf("ParseTPMDevice(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want || got.String() != tc.str {
			t.Errorf("ParseTPMDevice(%q) = %+v (%s), want %+v (%s)", tc.in, got, got, tc.want, tc.str)
		}
	}
	bad := []string{
		"tpmrm0", "dev/tpmrm0", "tcp://", "tcp://127.0.0.1", "tcp://:2321", "tcp://host:2321/x",
		"tcp://host:2321?a=b", "tcp://user@host:2321", "unix://", "unix://relative/sock", "http://host:1",
		"mssim://127.0.0.1:2321",
	}
	for _, in := range bad {
		if got, err := ParseTPMDevice(in); err == nil {
			t.Errorf("ParseTPMDevice(%q) = %+v, want an error", in, got)
		}
	}
}
