package buildinfo

// FromBuildInfo lets tests give the toolchain's record.
var FromBuildInfo = fromBuildInfo
