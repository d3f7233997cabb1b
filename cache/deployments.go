package cache

import (
	"sort"

	"github.com/keymesh/keymesh/event"
)

// Deployments is an immutable set of deployments at one revision. Readers
// hold on to the pointer they got; writers build a new one.
type Deployments struct {
	// Revision is the revision of the last change to the set.
	Revision uint64
	byID     map[string]*event.Deployment
	list     []*event.Deployment // sorted by ID
}

var emptyDeployments = NewDeployments(nil, 0)

// NewDeployments returns the set of ds at rev (deleted ones left out).
func NewDeployments(ds []event.Deployment, rev uint64) *Deployments {
	d := &Deployments{Revision: rev, byID: make(map[string]*event.Deployment, len(ds))}
	for i := range ds {
		if !ds[i].Deleted {
			dep := ds[i]
			d.byID[dep.ID] = &dep
		}
	}
	d.sort()
	return d
}

func (d *Deployments) sort() {
	d.list = make([]*event.Deployment, 0, len(d.byID))
	for _, dep := range d.byID {
		d.list = append(d.list, dep)
	}
	sort.Slice(d.list, func(i, j int) bool { return d.list[i].ID < d.list[j].ID })
}

// with returns a copy of d with dep upserted, or removed if deleted.
func (d *Deployments) with(dep *event.Deployment, rev uint64) *Deployments {
	n := &Deployments{Revision: rev, byID: make(map[string]*event.Deployment, len(d.byID)+1)}
	for id, x := range d.byID {
		n.byID[id] = x
	}
	if dep.Deleted {
		delete(n.byID, dep.ID)
	} else {
		c := *dep
		n.byID[dep.ID] = &c
	}
	n.sort()
	return n
}

// Get returns the deployment with id. The result must not be modified.
func (d *Deployments) Get(id string) (*event.Deployment, bool) {
	dep, ok := d.byID[id]
	return dep, ok
}

// List returns every deployment, sorted by ID. It must not be modified.
func (d *Deployments) List() []*event.Deployment { return d.list }

// Deployments returns the current set. A caller that sees AppliedRevision()
// at N and then calls Deployments sees every deployment change up to N.
func (v *View) Deployments() *Deployments { return v.deps.Load() }
