package validator

import "errors"

// errCatalogNotLoaded is returned until the catalog is first read; callers
// retry, as for an unreachable stage.
var errCatalogNotLoaded = unavailableError{errors.New("catalog not loaded yet")}

// errOutcomeCount is a next stage that answered the wrong number of
// outcomes.
var errOutcomeCount = errors.New("next stage answered a wrong number of outcomes")

type unavailableError struct{ error }

// Temporary marks the error as one that passes.
func (unavailableError) Temporary() bool { return true }
