package buildinfo_test

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/telemesh/telemesh/internal/buildinfo"
)

func TestReadKeepsTheLinkedValues(t *testing.T) {
	got := buildinfo.Read("v1.2.3", "abc", "2026-01-02T03:04:05Z")
	if got.Version != "v1.2.3" || got.Commit != "abc" || got.Date != "2026-01-02T03:04:05Z" {
		t.Errorf("Read = %+v, want the linked version, commit and date", got)
	}
	// A test binary records no module version and no commit.
	i := buildinfo.Read("", "", "")
	if i.Version != "dev" || i.Commit != "unknown" || i.Date != "unknown" || i.GoVersion == "" {
		t.Errorf("Read(\"\", \"\", \"\") = %+v, want version dev, commit and date unknown and the Go version", i)
	}
}

func TestRegisterShowsTheBuild(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := buildinfo.Register(reg, buildinfo.Info{Version: "v1.2.3", Commit: "abc", Modified: true}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP telemesh_build_info The build of telemesh this process runs: always 1, labelled with its version and commit.
# TYPE telemesh_build_info gauge
telemesh_build_info{commit="abc-modified",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "telemesh_build_info"); err != nil {
		t.Error(err)
	}
}

func TestToolchainRecordFillsTheGaps(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.4.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	got := buildinfo.FromBuildInfo(bi, "dev", "", "")
	want := buildinfo.Info{Version: "v0.4.0", Commit: "0123abcd", Modified: true, Date: "2026-12-01T10:00:00Z", GoVersion: "go1.26.8"}
	if got != want {
		t.Errorf("from the toolchain's record = %+v, want %+v", got, want)
	}
	// What the linker was given wins over the record.
	got = buildinfo.FromBuildInfo(bi, "v1.0.0", "feed", "2026-12-02T00:00:00Z")
	want = buildinfo.Info{Version: "v1.0.0", Commit: "feed", Date: "2026-12-02T00:00:00Z", GoVersion: "go1.26.8"}
	if got != want {
		t.Errorf("with linked values = %+v, want %+v", got, want)
	}
}
