package roles

import "testing"

// ScramVerifierForTest exposes the verifier to the tests.
func ScramVerifierForTest(t *testing.T, password string, salt []byte, iterations int) string {
	t.Helper()
	v, err := scramVerifier(password, salt, iterations)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
