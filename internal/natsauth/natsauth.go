// Package natsauth holds keymesh's NATS trust roots and issues NATS
// credentials per role (decentralised auth: operator → account → users).
//
// The origin keeps an operator key, a system-account key and the keymesh
// account key under its data dir (files nats-operator.nk, nats-system.nk,
// nats-account.nk, 0600, created on first use). A NATS server trusting the
// operator (ServerOptions, or the config Config prints for an external
// cluster) then admits only users whose JWT the account key signed, with
// the permissions of their role:
//
//   - RoleOrigin: everything in the account (publish events, answer
//     lookups, origin heartbeats, JetStream administration).
//   - RoleEdge, for edge id E: publish only E's own heartbeat, audit,
//     usage and limit-report subjects (event.EdgeSubject), lookup requests
//     and the JetStream API calls an ordered consumer of the event stream
//     makes; subscribe only to the event stream, origin heartbeats, every
//     edge's limit reports (event.EdgeLimitsSubject + ".*": each edge
//     merges the others') and E's own inbox (event.EdgeInbox). One edge's
//     credentials cannot speak for another.
//
// Seeds are secret: they are only ever written to 0600 files and to .creds
// output the caller asked for, never logged.
package natsauth

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/keymesh/keymesh/event"
)

// Role is what a credential may do.
type Role string

// The roles credentials are issued for.
const (
	RoleOrigin Role = "origin"
	RoleEdge   Role = "edge"
)

// ErrInvalid is returned for a bad role or edge id.
var ErrInvalid = errors.New("natsauth: invalid request")

// Key file names under the data dir.
const (
	OperatorFile = "nats-operator.nk"
	SystemFile   = "nats-system.nk"
	AccountFile  = "nats-account.nk"
)

// MaxEdgeID is the longest edge id credentials are issued for (the edge's
// own limit).
const MaxEdgeID = 200

// Keys are the trust roots: operator, system account and keymesh account.
type Keys struct {
	operator, system, account nkeys.KeyPair
}

// LoadOrCreate reads the keys from dir, creating (0600, never overwriting)
// those missing.
func LoadOrCreate(dir string) (*Keys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("natsauth: creating %s: %w", dir, err)
	}
	op, err := loadOrCreate(filepath.Join(dir, OperatorFile), nkeys.CreateOperator)
	if err != nil {
		return nil, err
	}
	sys, err := loadOrCreate(filepath.Join(dir, SystemFile), nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	acc, err := loadOrCreate(filepath.Join(dir, AccountFile), nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	return &Keys{operator: op, system: sys, account: acc}, nil
}

// Load reads existing keys from dir; it creates nothing.
func Load(dir string) (*Keys, error) {
	var kps [3]nkeys.KeyPair
	for i, name := range []string{OperatorFile, SystemFile, AccountFile} {
		kp, err := readSeed(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		kps[i] = kp
	}
	return &Keys{operator: kps[0], system: kps[1], account: kps[2]}, nil
}

func readSeed(path string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("natsauth: reading %s: %w", path, err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("natsauth: %s holds no valid seed", path)
	}
	return kp, nil
}

func loadOrCreate(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	if kp, err := readSeed(path); err == nil {
		return kp, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	kp, err := create()
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) { // another process won the race
		return readSeed(path)
	}
	if err != nil {
		return nil, fmt.Errorf("natsauth: creating %s: %w", path, err)
	}
	if _, err := f.Write(append(seed, '\n')); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("natsauth: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("natsauth: writing %s: %w", path, err)
	}
	return kp, nil
}

func pub(kp nkeys.KeyPair) string {
	p, _ := kp.PublicKey() // never fails on a valid pair
	return p
}

// AccountPublicKey is the keymesh account's public nkey.
func (k *Keys) AccountPublicKey() string { return pub(k.account) }

// SystemPublicKey is the system account's public nkey.
func (k *Keys) SystemPublicKey() string { return pub(k.system) }

func (k *Keys) operatorClaims() *jwt.OperatorClaims {
	oc := jwt.NewOperatorClaims(pub(k.operator))
	oc.Name = "keymesh"
	oc.SystemAccount = pub(k.system)
	return oc
}

// OperatorJWT is the self-signed operator JWT a server trusts.
func (k *Keys) OperatorJWT() (string, error) { return k.operatorClaims().Encode(k.operator) }

// SystemJWT is the system account's JWT.
func (k *Keys) SystemJWT() (string, error) {
	ac := jwt.NewAccountClaims(pub(k.system))
	ac.Name = "SYS"
	return ac.Encode(k.operator)
}

// AccountJWT is the keymesh account's JWT, with JetStream enabled.
func (k *Keys) AccountJWT() (string, error) {
	ac := jwt.NewAccountClaims(pub(k.account))
	ac.Name = "KEYMESH"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1, MaxAckPending: -1}
	return ac.Encode(k.operator)
}

// ServerOptions makes opts trust the operator, with a memory resolver
// preloaded with the system and keymesh accounts.
func (k *Keys) ServerOptions(opts *server.Options) error {
	ojwt, err := k.OperatorJWT()
	if err != nil {
		return err
	}
	oc, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		return err
	}
	res := &server.MemAccResolver{}
	sjwt, err := k.SystemJWT()
	if err != nil {
		return err
	}
	ajwt, err := k.AccountJWT()
	if err != nil {
		return err
	}
	if err := res.Store(pub(k.system), sjwt); err != nil {
		return err
	}
	if err := res.Store(pub(k.account), ajwt); err != nil {
		return err
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{oc}
	opts.AccountResolver = res
	opts.SystemAccount = pub(k.system)
	return nil
}

// Config is the nats-server configuration fragment an external cluster
// needs to admit keymesh's credentials: the operator JWT, the system
// account and a memory resolver preloaded with both accounts.
func (k *Keys) Config() (string, error) {
	ojwt, err := k.OperatorJWT()
	if err != nil {
		return "", err
	}
	sjwt, err := k.SystemJWT()
	if err != nil {
		return "", err
	}
	ajwt, err := k.AccountJWT()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`# keymesh NATS trust: generated by "origin nats-config"; no secrets in here.
# Credentials: "origin nats-creds --role origin|edge".
operator: %s
system_account: %s
resolver: MEMORY
resolver_preload: {
  # SYS
  %s: %s
  # KEYMESH (JetStream enabled)
  %s: %s
}
`, ojwt, pub(k.system), pub(k.system), sjwt, pub(k.account), ajwt), nil
}

// ValidEdgeID reports whether credentials can be issued for id: 1 to
// MaxEdgeID bytes, no white space (the edge's own rule).
func ValidEdgeID(id string) bool {
	return id != "" && len(id) <= MaxEdgeID && !strings.ContainsAny(id, " \t\r\n")
}

// EdgePermissions are what edge id may publish and subscribe to.
func EdgePermissions(id string) jwt.Permissions {
	js := "$JS.API."
	s := event.StreamName
	return jwt.Permissions{
		Pub: jwt.Permission{Allow: jwt.StringList{
			event.EdgeSubject(event.EdgeHeartbeatSubject, id),
			event.EdgeSubject(event.EdgeAuditSubject, id),
			event.EdgeSubject(event.EdgeUsageSubject, id),
			event.EdgeSubject(event.EdgeLimitsSubject, id),
			event.LookupKeySubject,
			event.SnapshotSubject,
			// What an ordered consumer of the event stream calls.
			js + "INFO",
			js + "STREAM.INFO." + s,
			js + "STREAM.MSG.GET." + s,
			js + "DIRECT.GET." + s,
			js + "DIRECT.GET." + s + ".>",
			js + "CONSUMER.CREATE." + s,
			js + "CONSUMER.CREATE." + s + ".>",
			js + "CONSUMER.MSG.NEXT." + s + ".*",
			js + "CONSUMER.INFO." + s + ".*",
			js + "CONSUMER.DELETE." + s + ".*",
		}},
		Sub: jwt.Permission{Allow: jwt.StringList{
			event.StreamSubjects,
			event.OriginHeartbeatSubject,
			// Every edge's limit reports, one subject token deep: the
			// subscriber takes the sender from the subject.
			event.EdgeLimitsSubject + ".*",
			event.EdgeInbox(id) + ".>",
		}},
	}
}

// UserJWT issues a user JWT for role (id names the edge for RoleEdge, and
// is only a label for RoleOrigin) and the user's seed.
func (k *Keys) UserJWT(role Role, id string) (string, []byte, error) {
	switch role {
	case RoleOrigin:
		if id == "" {
			id = "origin"
		}
	case RoleEdge:
		if !ValidEdgeID(id) {
			return "", nil, fmt.Errorf("%w: edge id: 1 to %d characters, no spaces", ErrInvalid, MaxEdgeID)
		}
	default:
		return "", nil, fmt.Errorf("%w: role %q: want origin or edge", ErrInvalid, role)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return "", nil, err
	}
	seed, err := user.Seed()
	if err != nil {
		return "", nil, err
	}
	uc := jwt.NewUserClaims(pub(user))
	uc.Name = id
	uc.Tags.Add("keymesh-role:" + string(role))
	if role == RoleEdge {
		uc.Permissions = EdgePermissions(id)
	}
	tok, err := uc.Encode(k.account)
	if err != nil {
		return "", nil, err
	}
	return tok, seed, nil
}

// Creds returns a .creds file (user JWT and seed) for role and id.
func (k *Keys) Creds(role Role, id string) ([]byte, error) {
	tok, seed, err := k.UserJWT(role, id)
	if err != nil {
		return nil, err
	}
	return jwt.FormatUserConfig(tok, seed)
}

// EdgeIDFromCreds returns the edge id a .creds file was issued for ("" for
// an origin credential or one keymesh did not issue). It reads only the
// JWT, never the seed.
func EdgeIDFromCreds(creds []byte) (string, error) {
	tok, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return "", fmt.Errorf("%w: not a NATS .creds file", ErrInvalid)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return "", fmt.Errorf("%w: not a NATS user JWT", ErrInvalid)
	}
	if !uc.Tags.Contains("keymesh-role:" + string(RoleEdge)) {
		return "", nil
	}
	return uc.Name, nil
}

// ClientOptions are the options a client of an external NATS connects
// with: a .creds file (creds, "" for none), a CA to verify the server with
// and a client certificate (each "" for none; cert and key go together).
// Edges use it too. Files are checked now, so a typo fails at startup.
func ClientOptions(creds, ca, cert, key string) ([]nats.Option, error) {
	var opts []nats.Option
	if creds != "" {
		if _, err := os.Stat(creds); err != nil {
			return nil, fmt.Errorf("%w: NATS credentials: %w", ErrInvalid, err)
		}
		opts = append(opts, nats.UserCredentials(creds))
	}
	if ca != "" {
		if _, err := os.Stat(ca); err != nil {
			return nil, fmt.Errorf("%w: NATS TLS CA: %w", ErrInvalid, err)
		}
		opts = append(opts, nats.RootCAs(ca))
	}
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("%w: NATS TLS certificate and key go together", ErrInvalid)
	}
	if cert != "" {
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			return nil, fmt.Errorf("%w: NATS TLS client certificate: %w", ErrInvalid, err)
		}
		opts = append(opts, nats.ClientCert(cert, key))
	}
	return opts, nil
}
