package main

import (
	"fmt"

	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/schema"
)

// checkSchemaNames refuses the organization, device type and topic names
// of f that cannot be stored or cannot appear in a subject, before any
// write, in one line that names the definition and the rule. It is part of
// --dry-run too, so a file that passes a dry run is not refused on apply.
func checkSchemaNames(f *schema.File) error {
	var errs []error
	if err := ops.CheckOrganizationSlug(f.Organization); err != nil {
		errs = append(errs, err)
	}
	for _, dt := range f.DeviceTypes {
		if err := ops.CheckDeviceTypeName(dt.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		if dt.BaseTopic != "" {
			if err := ops.CheckBaseTopic(dt.BaseTopic); err != nil {
				errs = append(errs, fmt.Errorf("device type %q: %w", dt.Name, err))
			}
		}
		for _, t := range dt.Topics {
			if err := ops.CheckTopicSuffix(t.Suffix); err != nil {
				errs = append(errs, fmt.Errorf("device type %q: %w", dt.Name, err))
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	// One line, as every refusal of schema apply is.
	msg := errs[0].Error()
	for _, e := range errs[1:] {
		msg += "; " + e.Error()
	}
	return fmt.Errorf("%w: %s", schema.ErrInvalid, msg)
}
