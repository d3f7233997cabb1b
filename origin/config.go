package origin

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Config configures an origin. The zero value of each field means its
// documented default; DefaultConfig returns them filled in.
type Config struct {
	// Listen is the REST API address (default "127.0.0.1:7000"; ":0" style
	// addresses pick a free port, see Server.Addr).
	Listen string
	// DataDir holds the SQLite store, the embedded NATS store, signing.key,
	// signing.pub, jwt.key and the bootstrap admin-password file (default
	// "./data/origin"). Created with mode 0700 if missing.
	DataDir string
	// Store is "" (SQLite at <DataDir>/origin.db), "sqlite://<path>", or
	// "postgres://..." (PostgreSQL; several origins may share one database).
	Store string
	// NATSURL is the URL(s) of an external NATS cluster with JetStream; ""
	// starts an embedded NATS server with JetStream.
	NATSURL string
	// NATSListen is where the embedded NATS server listens, host:port
	// (default "127.0.0.1:4222"; port -1 picks a random free port).
	NATSListen string
	// NATSCreds is a NATS .creds file the origin connects to an external
	// NATSURL with (see "origin nats-creds --role origin"); "" connects
	// without credentials. The embedded server always requires credentials:
	// it trusts the operator in <DataDir>/nats-*.nk (created on first start,
	// 0600) and the origin connects with an origin credential it issues
	// itself; NATSCreds must then be "".
	NATSCreds string
	// NATSTLSCA verifies the NATS server's certificate (PEM file); with
	// NATSTLSCert and NATSTLSKey set as well, the origin presents that
	// client certificate to an external NATS. Against the embedded server,
	// NATSTLSCert and NATSTLSKey are the certificate it serves TLS with
	// (clients then need tls:// and the CA).
	NATSTLSCA, NATSTLSCert, NATSTLSKey string
	// StreamReplicas is how many JetStream servers keep a copy of the event
	// stream, 1 to 5 (default 1, all an embedded server can hold). Against
	// an external cluster of three or more, 3 survives the loss of any one.
	// A stream created with another value is updated to this one.
	StreamReplicas int
	// AdminPassword is the password of user "admin", created on first start.
	// If empty, a random one is written to <DataDir>/admin-password (0600).
	AdminPassword string
	// PasswordCost is the bcrypt cost of stored passwords (default
	// bcrypt.DefaultCost).
	PasswordCost int
	// TokenTTL is the lifetime of admin JWTs (default 12h).
	TokenTTL time.Duration
	// UserCacheTTL is how long a replica trusts what it read of a user
	// (their token version) before reading it again (default 1s; negative:
	// read on every request). Logout, a password change and a user's
	// deletion answer only once it has passed since they committed, so that
	// when they answer, no replica sharing the store accepts the tokens
	// they revoked.
	UserCacheTTL time.Duration
	// PollInterval is how often the outbox publisher looks for unpublished
	// events besides being woken by each commit (default 1s).
	PollInterval time.Duration
	// HeartbeatInterval is how often the origin tells edges, signed, that
	// it is alive and its committed head: the store's latest committed
	// revision (default 1s). Edges that stop hearing it, or that have not
	// applied the head it names, re-validate what they cache.
	HeartbeatInterval time.Duration
	// Logger receives operational logs (default slog.Default()).
	Logger *slog.Logger
	// EdgeLiveness: an edge whose last heartbeat is older than this is not
	// live, and ?wait does not wait for it (default 10s). It is dropped from
	// the registry after 10x this.
	EdgeLiveness time.Duration
	// MaxEdges bounds the edge registry; heartbeats of new edges over it are
	// ignored and counted (default 10,000).
	MaxEdges int
	// AuditRetention is how long audit records are kept (default 30 days).
	AuditRetention time.Duration
	// AuditMaxRows bounds the audit table; the oldest records beyond it are
	// pruned (default 1,000,000).
	AuditMaxRows int
	// AuditPruneInterval is how often retention is applied (default 1m).
	AuditPruneInterval time.Duration
	// AuditBuffer bounds the audit records waiting to be stored; over it
	// they are dropped and counted (default 10,000).
	AuditBuffer int
	// StreamMaxAge bounds the event stream and the outbox (default 30
	// days, at least 2 minutes, the stream's duplicate window): JetStream
	// drops events older than this, and published events older than this
	// are deleted from the store (unpublished ones never are). An edge
	// further behind sees a gap and drops its cache.
	StreamMaxAge time.Duration
	// UsageStreamMaxBytes bounds the usage stream (event.UsageStreamName,
	// see usage.go), which holds only the records no origin has stored
	// yet: once full it refuses publishes (edges keep their records in
	// their spool and retry), it never evicts an unread one to make room
	// (default 1 GiB).
	UsageStreamMaxBytes int64
	// UsageStreamMaxAge is how long an unread usage record waits in the
	// stream for an origin before JetStream drops it (default 7 days, at
	// least the stream's 10-minute duplicate window). Only records no
	// origin read for this long are lost.
	UsageStreamMaxAge time.Duration
	// UsageDedupRetention is how long a stored usage record's id is kept
	// to recognise it again (default 30 days; more than
	// UsageStreamMaxAge). A record whose time is older than this is
	// refused as malformed, so a record is counted at most once however
	// late its copy comes: it is either found or refused. It must exceed
	// how long an edge may hold a record in its spool.
	UsageDedupRetention time.Duration
	// UsagePruneInterval is how often usage ids past UsageDedupRetention
	// are deleted (default 1h).
	UsagePruneInterval time.Duration
	// BalanceInterval is how often the origin publishes, sealed, the
	// balances of long-period bounds (tokens_per_day, quotas) its usage
	// ledger changed, besides soon after it stores usage (default 2s;
	// negative: publish none, edges then hold those bounds to their own
	// counts). See balance.go.
	BalanceInterval time.Duration
	// BalanceRefresh is how often every balance of the current periods is
	// published again, changed or not, so that an edge that just started
	// learns them (default 10s; at least BalanceInterval).
	BalanceRefresh time.Duration
	// MaxBalances bounds the counters whose balances the publisher keeps
	// to refresh, and the owners waiting to be recomputed; past it the
	// publisher reads every bounded owner again instead (default 100,000).
	MaxBalances int

	// disablePublisher is for tests: commit events without publishing.
	disablePublisher bool
	// now is for tests: the clock of token and key expiry and the login
	// limiter (default time.Now).
	now func() time.Time
	// hasher is for tests: password hashing (default bcrypt).
	hasher passwordHasher
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Listen:       "127.0.0.1:7000",
		DataDir:      "./data/origin",
		NATSListen:   "127.0.0.1:4222",
		PasswordCost: bcrypt.DefaultCost,
		TokenTTL:     12 * time.Hour,
		UserCacheTTL: time.Second,
		PollInterval: time.Second,
		Logger:       slog.Default(),

		HeartbeatInterval: time.Second,
		AuditRetention:    30 * 24 * time.Hour,
		AuditMaxRows:      1_000_000,
		StreamMaxAge:      30 * 24 * time.Hour,
		StreamReplicas:    1,

		UsageStreamMaxBytes: 1 << 30,
		UsageStreamMaxAge:   7 * 24 * time.Hour,
		UsageDedupRetention: 30 * 24 * time.Hour,
		UsagePruneInterval:  time.Hour,

		BalanceInterval: 2 * time.Second,
		BalanceRefresh:  10 * time.Second,
		MaxBalances:     100_000,
	}
}

func (c *Config) fill() error {
	d := DefaultConfig()
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.DataDir == "" {
		c.DataDir = d.DataDir
	}
	if c.NATSListen == "" {
		c.NATSListen = d.NATSListen
	}
	if c.StreamReplicas == 0 {
		c.StreamReplicas = d.StreamReplicas
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		return fmt.Errorf("%w: StreamReplicas must be between 1 and 5", ErrInvalidConfig)
	}
	if c.PasswordCost == 0 {
		c.PasswordCost = d.PasswordCost
	}
	if c.PasswordCost < bcrypt.MinCost || c.PasswordCost > bcrypt.MaxCost {
		return fmt.Errorf("%w: PasswordCost must be between %d and %d", ErrInvalidConfig, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if c.TokenTTL == 0 {
		c.TokenTTL = d.TokenTTL
	}
	if c.TokenTTL < 0 {
		return fmt.Errorf("%w: TokenTTL must be positive", ErrInvalidConfig)
	}
	if c.UserCacheTTL == 0 {
		c.UserCacheTTL = d.UserCacheTTL
	}
	if c.UserCacheTTL > time.Minute {
		return fmt.Errorf("%w: UserCacheTTL must be at most 1m (revocations wait for it)", ErrInvalidConfig)
	}
	if c.hasher == nil {
		c.hasher = bcryptHasher{}
	}
	if c.PollInterval <= 0 {
		c.PollInterval = d.PollInterval
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = d.HeartbeatInterval
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.EdgeLiveness <= 0 {
		c.EdgeLiveness = 10 * time.Second
	}
	if c.MaxEdges <= 0 {
		c.MaxEdges = 10_000
	}
	if c.AuditRetention < 0 || c.AuditMaxRows < 0 {
		return fmt.Errorf("%w: audit retention and row limit must not be negative", ErrInvalidConfig)
	}
	if c.AuditRetention == 0 {
		c.AuditRetention = d.AuditRetention
	}
	if c.AuditMaxRows == 0 {
		c.AuditMaxRows = d.AuditMaxRows
	}
	if c.AuditPruneInterval <= 0 {
		c.AuditPruneInterval = time.Minute
	}
	if c.AuditBuffer <= 0 {
		c.AuditBuffer = 10_000
	}
	if c.StreamMaxAge == 0 {
		c.StreamMaxAge = d.StreamMaxAge
	}
	if c.StreamMaxAge < streamDuplicates {
		return fmt.Errorf("%w: StreamMaxAge must be at least %v (the stream's duplicate window)", ErrInvalidConfig, streamDuplicates)
	}
	if err := c.fillUsage(d); err != nil {
		return err
	}
	if c.BalanceInterval == 0 {
		c.BalanceInterval = d.BalanceInterval
	}
	if c.BalanceRefresh <= 0 {
		c.BalanceRefresh = d.BalanceRefresh
	}
	if c.BalanceInterval > 0 && c.BalanceRefresh < c.BalanceInterval {
		return fmt.Errorf("%w: BalanceRefresh must be at least BalanceInterval", ErrInvalidConfig)
	}
	if c.MaxBalances <= 0 {
		c.MaxBalances = d.MaxBalances
	}
	if err := checkStoreDSN(c.Store); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("%w: Listen %q: want host:port", ErrInvalidConfig, c.Listen)
	}
	if c.NATSURL == "" {
		if _, _, err := splitNATSListen(c.NATSListen); err != nil {
			return err
		}
		if c.NATSCreds != "" {
			return fmt.Errorf("%w: NATSCreds is for an external NATSURL; the embedded server issues the origin's own", ErrInvalidConfig)
		}
	}
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		return fmt.Errorf("%w: NATSTLSCert and NATSTLSKey go together", ErrInvalidConfig)
	}
	return nil
}

func (c *Config) fillUsage(d Config) error {
	if c.UsageStreamMaxBytes < 0 || c.UsageStreamMaxAge < 0 || c.UsageDedupRetention < 0 {
		return fmt.Errorf("%w: usage stream bounds and retention must not be negative", ErrInvalidConfig)
	}
	if c.UsageStreamMaxBytes == 0 {
		c.UsageStreamMaxBytes = d.UsageStreamMaxBytes
	}
	if c.UsageStreamMaxAge == 0 {
		c.UsageStreamMaxAge = d.UsageStreamMaxAge
	}
	if c.UsageDedupRetention == 0 {
		c.UsageDedupRetention = d.UsageDedupRetention
	}
	if c.UsagePruneInterval <= 0 {
		c.UsagePruneInterval = d.UsagePruneInterval
	}
	if c.UsageStreamMaxAge < usageStreamDuplicates {
		return fmt.Errorf("%w: UsageStreamMaxAge must be at least %v (the usage stream's duplicate window)", ErrInvalidConfig, usageStreamDuplicates)
	}
	if c.UsageDedupRetention <= c.UsageStreamMaxAge {
		return fmt.Errorf("%w: UsageDedupRetention must exceed UsageStreamMaxAge (a record still in the stream must be recognised)", ErrInvalidConfig)
	}
	return nil
}
