// Package buildinfo says which build of telemesh is running: the version the
// release gave it, the commit and the time of that commit, read from what the
// Go toolchain records in the binary.
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Info describes one build.
type Info struct {
	// Version is the release version (main.version, set at link time), else
	// the module version the toolchain recorded, else "dev".
	Version string
	// Commit is the Git commit the binary was built from (main.commit, else
	// the toolchain's vcs.revision), "unknown" when neither says (go run, go
	// test). A "-dirty" suffix from the linker or Modified says the work
	// tree had changes the commit does not hold.
	Commit string
	// Modified says the work tree had changes the commit does not hold.
	Modified bool
	// Date is the build date: the time of the commit (RFC 3339), so the same
	// commit builds the same binary; "unknown" when none was recorded.
	Date string
	// GoVersion is the toolchain that built the binary.
	GoVersion string
}

// Read returns the running binary's build. version, commit and date are
// what the release set at link time (main.version, main.commit, main.date);
// each one left empty (or version "dev") is taken from what the toolchain
// recorded, which it does not in a Git worktree or with -buildvcs=false.
func Read(version, commit, date string) Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(bi, version, commit, date)
}

func fromBuildInfo(bi *debug.BuildInfo, version, commit, date string) Info {
	info := Info{Version: version, Commit: commit, Date: date}
	if bi != nil {
		info.GoVersion = bi.GoVersion
		if (info.Version == "" || info.Version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && commit == "":
				info.Commit = s.Value
			case s.Key == "vcs.time" && date == "":
				info.Date = s.Value
			case s.Key == "vcs.modified" && commit == "":
				info.Modified = s.Value == "true"
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.Date == "" {
		info.Date = "unknown"
	}
	return info
}

// String is the build in the lines `telemesh version` prints.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "telemesh %s\n", i.Version)
	commit := i.Commit
	if i.Modified {
		commit += " (modified)"
	}
	fmt.Fprintf(&b, "commit   %s\n", commit)
	fmt.Fprintf(&b, "date     %s\n", i.Date)
	if i.GoVersion != "" {
		fmt.Fprintf(&b, "go       %s\n", i.GoVersion)
	}
	return b.String()
}

// Register adds the telemesh_build_info gauge to reg: always 1, its labels
// naming the version and commit, so a dashboard can tell which build each
// replica runs and a query can join it to any other series.
func Register(reg prometheus.Registerer, i Info) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "telemesh_build_info",
		Help: "The build of telemesh this process runs: always 1, labelled with its version and commit.",
	}, []string{"version", "commit"})
	commit := i.Commit
	if i.Modified {
		commit += "-modified"
	}
	g.WithLabelValues(i.Version, commit).Set(1)
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("register build info: %w", err)
	}
	return nil
}
