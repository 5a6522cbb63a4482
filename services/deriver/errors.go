package deriver

import "errors"

// errCatalogNotLoaded is returned until the catalog is first read; callers
// retry, as for an unreachable stage.
var errCatalogNotLoaded = unavailableError{errors.New("catalog not loaded yet")}

type unavailableError struct{ error }

// Temporary marks the error as one that passes.
func (unavailableError) Temporary() bool { return true }
