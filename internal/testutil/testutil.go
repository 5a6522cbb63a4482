// Package testutil holds the small helpers every test package shares:
// waiting for a condition, reading a metric, and checking JSON the standard
// decoder would accept too leniently.
package testutil

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Eventually calls cond until it returns nil, and fails the test with what
// and cond's last error if it has not by timeout. The wait starts short and
// grows to a quarter of a second, so a condition that holds at once costs
// nothing and a slow one does not spin a busy machine.
//
// Tests run on shared, busy machines: pick a timeout that is generous for
// the slowest plausible run (tens of seconds, not a few), since a passing
// test never waits it out.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %s: %s: %v", timeout, what, err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// DuplicateKeys returns every key that appears more than once in one object
// of the single JSON value in data, as a path from the root ("a.b" for key b
// in the object under a, "a[2].b" inside an array). encoding/json keeps the
// last of repeated keys without a word, so this walks the tokens itself. It
// returns an error for anything but exactly one well-formed JSON value.
func DuplicateKeys(data []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var dups []string
	var value func(path string) error
	value = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				k, _ := kt.(string)
				p := k
				if path != "" {
					p = path + "." + k
				}
				if seen[k] {
					dups = append(dups, p)
				}
				seen[k] = true
				if err := value(p); err != nil {
					return err
				}
			}
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := value(fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		default:
			return nil
		}
		_, err = dec.Token() // the closing delimiter
		return err
	}
	if err := value(""); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not JSON: data after the value")
	}
	return dups, nil
}

// Metric returns the value of one series on the Prometheus text page at
// url. series is written as on the page: the name, and its labels if it
// has any (`x_total{code="OK"}`).
func Metric(ctx context.Context, url, series string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := cutLast(sc.Text())
		if ok && name == series {
			return strconv.ParseFloat(value, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no series %s at %s", series, url)
}

// cutLast splits a metric line at its last space: the series, and the value.
func cutLast(line string) (series, value string, ok bool) {
	i := strings.LastIndexByte(line, ' ')
	if i < 0 || strings.HasPrefix(line, "#") {
		return "", "", false
	}
	return line[:i], line[i+1:], true
}
