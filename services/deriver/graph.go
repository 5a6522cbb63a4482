package deriver

import (
	"cmp"
	"slices"

	"github.com/telemesh/telemesh/internal/catalog"
)

// Dependencies returns a derived definition's explicit dependencies, else
// the var names found in its expression, in order of first appearance. Of a
// dotted path such as "a.b" only the first segment is a dependency. Vars
// inside the logic of filter, map, reduce, all, none and some read the
// current element, not the message, so they are not dependencies; nor is a
// var whose name is computed. An expression that is not JSON has none.
func Dependencies(d catalog.Derived) []string {
	var rule any
	if len(d.Dependencies) == 0 {
		var err error
		if rule, err = decode(d.Expression); err != nil {
			return nil
		}
	}
	deps, _, _ := dependencies(d, rule)
	return deps
}

// dependencies returns all dependencies of a definition, the required ones
// and the keys its expression reads. Explicit dependencies are all
// required; an inferred one is optional only when every var reading it
// gives a default, since then the expression's author has said what absence
// means. A key the expression reads beyond its explicit dependencies is a
// dependency too, though not a required one: leaving it out would order the
// definition without it and evaluate the var as null.
func dependencies(d catalog.Derived, rule any) (all, required, vars []string) {
	needed := map[string]bool{}
	walkVars(rule, func(name string, hasDefault bool) {
		if _, seen := needed[name]; !seen {
			vars = append(vars, name)
		}
		needed[name] = needed[name] || !hasDefault
	})
	if len(d.Dependencies) > 0 {
		all = make([]string, 0, len(d.Dependencies)+len(vars))
		for _, dep := range d.Dependencies {
			if dep != "" && !slices.Contains(all, dep) {
				all = append(all, dep)
			}
		}
		required = slices.Clone(all)
		for _, name := range vars {
			if !slices.Contains(all, name) {
				all = append(all, name)
			}
		}
		return all, required, vars
	}
	for _, name := range vars {
		if needed[name] {
			required = append(required, name)
		}
	}
	return slices.Clone(vars), required, vars
}

// findCycles returns each key on a dependency cycle with the shortest cycle
// through it, in definition order. The cycle starts at its member that comes
// first in definition order, so that the keys of a two-key cycle report the
// same cycle.
func findCycles(nodes []*node, byKey map[string]*node) []cycleKey {
	rank := make(map[string]int, len(nodes))
	for i, n := range nodes {
		rank[n.def.Key] = i
	}
	comp := components(nodes, byKey)
	var out []cycleKey
	for _, n := range nodes {
		c := comp[n.def.Key]
		if c.size == 1 && !slices.Contains(n.deps, n.def.Key) {
			continue
		}
		cycle := shortestCycle(n, byKey, func(k string) bool { return comp[k].id == c.id })
		start := 0
		for i, k := range cycle {
			if rank[k] < rank[cycle[start]] {
				start = i
			}
		}
		rotated := append(slices.Clone(cycle[start:]), cycle[:start]...)
		out = append(out, cycleKey{key: n.def.Key, cycle: append(rotated, rotated[0])})
	}
	return out
}

// shortestCycle returns the keys of a shortest cycle from n back to itself,
// without repeating n at the end, following only keys in the same component.
func shortestCycle(n *node, byKey map[string]*node, same func(string) bool) []string {
	from := map[string]string{}
	queue := []string{n.def.Key}
	for len(queue) > 0 {
		k := queue[0]
		queue = queue[1:]
		for _, dep := range byKey[k].deps {
			if byKey[dep] == nil || !same(dep) {
				continue
			}
			if dep == n.def.Key {
				path := []string{k}
				for k != n.def.Key {
					k = from[k]
					path = append(path, k)
				}
				slices.Reverse(path)
				return path
			}
			if _, seen := from[dep]; !seen {
				from[dep] = k
				queue = append(queue, dep)
			}
		}
	}
	return []string{n.def.Key}
}

type component struct{ id, size int }

// components finds the strongly connected components of the dependency
// graph (Tarjan); a key is on a cycle when its component has more than one
// key or it depends on itself.
func components(nodes []*node, byKey map[string]*node) map[string]component {
	var (
		index   = map[string]int{}
		low     = map[string]int{}
		onStack = map[string]bool{}
		stack   []string
		out     = map[string]component{}
		next    int
		ids     int
	)
	var visit func(n *node)
	visit = func(n *node) {
		k := n.def.Key
		index[k], low[k] = next, next
		next++
		stack = append(stack, k)
		onStack[k] = true
		for _, dep := range n.deps {
			d := byKey[dep]
			if d == nil {
				continue
			}
			if _, seen := index[dep]; !seen {
				visit(d)
				low[k] = min(low[k], low[dep])
			} else if onStack[dep] {
				low[k] = min(low[k], index[dep])
			}
		}
		if low[k] != index[k] {
			return
		}
		var members []string
		for {
			top := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[top] = false
			members = append(members, top)
			if top == k {
				break
			}
		}
		for _, m := range members {
			out[m] = component{id: ids, size: len(members)}
		}
		ids++
	}
	for _, n := range nodes {
		if _, seen := index[n.def.Key]; !seen {
			visit(n)
		}
	}
	return out
}

// dependencyOrder sorts the keys not on a cycle so that each follows the
// derived keys it depends on; among keys that are ready together, the
// definition order (sequence, then key) decides. Dependencies on cycle keys
// are ignored here: those are unresolved before any evaluation.
func dependencyOrder(nodes []*node, byKey map[string]*node, onCycle map[string]bool) []*node {
	waiting := map[string]int{}
	users := map[string][]*node{}
	var ready []*node
	for _, n := range nodes {
		if onCycle[n.def.Key] {
			continue
		}
		count := 0
		for _, dep := range n.deps {
			if byKey[dep] != nil && !onCycle[dep] {
				count++
				users[dep] = append(users[dep], n)
			}
		}
		waiting[n.def.Key] = count
		if count == 0 {
			ready = append(ready, n)
		}
	}
	order := make([]*node, 0, len(waiting))
	for len(ready) > 0 {
		// A topic has few derived keys, so a scan is cheaper than a heap.
		best := 0
		for i := range ready {
			if compareDefinitions(ready[i].def, ready[best].def) < 0 {
				best = i
			}
		}
		n := ready[best]
		ready = slices.Delete(ready, best, best+1)
		order = append(order, n)
		for _, u := range users[n.def.Key] {
			waiting[u.def.Key]--
			if waiting[u.def.Key] == 0 {
				ready = append(ready, u)
			}
		}
	}
	return order
}

func compareDefinitions(a, b catalog.Derived) int {
	return cmp.Or(cmp.Compare(a.Sequence, b.Sequence), cmp.Compare(a.Key, b.Key))
}

func sortedDefinitions(derived []catalog.Derived) []catalog.Derived {
	defs := slices.Clone(derived)
	slices.SortStableFunc(defs, compareDefinitions)
	return defs
}
