# ---------------------------------------------------------------------------
# modules/control-plane — keymesh's control plane over SSH: per region a
# NATS cluster with JetStream, the regions joined by NATS gateways into one
# supercluster, and origin replicas sharing one PostgreSQL and one signing
# key. Installed, supervised and removed by ../service.
# ---------------------------------------------------------------------------

variable "regions" {
  description = <<-EOT
    region name => its NATS servers and origin replicas. The region name is
    the NATS cluster and gateway name; edges of a site in that region use its
    nats_client_urls output. Every region has 3 (or 5) NATS servers; origins
    may run in one region or several (at least one in all). Fields of a NATS
    server:
      host          SSH address
      ssh_port      SSH port (22)
      ssh_user      SSH user (root); for "systemd" root or passwordless sudo
      arch          amd64 | arm64: which dist/linux_<arch>/nats-server
      name          unique server name (default "<region>-nats-<index>")
      address       where clients, routes and gateways reach it (default host)
      listen_host   bind address of the client, route and gateway ports (0.0.0.0)
      client_port   clients: origins and edges (4222)
      cluster_port  routes within the region (6222)
      gateway_port  gateways between regions (7222)
      monitor_port  monitoring /healthz, bound to 127.0.0.1 (8222)
    Fields of an origin replica:
      host, ssh_port, ssh_user, arch  as above (dist/linux_<arch>/origin)
      name          unique name (default "<region>-origin-<index>")
      listen        REST admin API, /health and /metrics (0.0.0.0:7000)
      public_host   host name for the origin_endpoints output (default host)
  EOT
  type = map(object({
    nats = list(object({
      host         = string
      ssh_port     = optional(number, 22)
      ssh_user     = optional(string, "root")
      arch         = optional(string, "amd64")
      name         = optional(string)
      address      = optional(string)
      listen_host  = optional(string, "0.0.0.0")
      client_port  = optional(number, 4222)
      cluster_port = optional(number, 6222)
      gateway_port = optional(number, 7222)
      monitor_port = optional(number, 8222)
    }))
    origins = optional(list(object({
      host        = string
      ssh_port    = optional(number, 22)
      ssh_user    = optional(string, "root")
      arch        = optional(string, "amd64")
      name        = optional(string)
      listen      = optional(string, "0.0.0.0:7000")
      public_host = optional(string)
    })), [])
  }))
  validation {
    condition     = length(var.regions) >= 1 && alltrue([for r, _ in var.regions : can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", r))])
    error_message = "Give at least one region; region names are 1-32 lowercase letters, digits and '-'."
  }
  validation {
    condition     = alltrue([for r in values(var.regions) : contains([3, 5], length(r.nats))])
    error_message = "Every region runs a NATS cluster of 3 (or 5) servers: JetStream keeps 3 replicas of the event stream and needs a majority."
  }
  validation {
    condition     = sum([for r in values(var.regions) : length(r.origins)]) >= 1
    error_message = "At least one region needs an origin replica."
  }
  validation {
    condition = alltrue(flatten([for r in values(var.regions) : concat(
      [for n in r.nats : can(regex("^[A-Za-z0-9.:_\\[\\]-]+$", n.host)) && can(regex("^[A-Za-z0-9.:_\\[\\]-]+$", coalesce(n.address, n.host)))],
      [for o in r.origins : can(regex("^[A-Za-z0-9.:_\\[\\]-]+$", o.host))],
    )]))
    error_message = "Every host (and address) is a DNS name or an IP address."
  }
  validation {
    condition = alltrue(flatten([for r in values(var.regions) : concat(
      [for n in r.nats : [for p in [n.ssh_port, n.client_port, n.cluster_port, n.gateway_port, n.monitor_port] : p >= 1 && p <= 65535 && floor(p) == p]],
      [for o in r.origins : o.ssh_port >= 1 && o.ssh_port <= 65535 && floor(o.ssh_port) == o.ssh_port],
    )]))
    error_message = "Ports are integers between 1 and 65535."
  }
  validation {
    condition = alltrue(flatten([for r in values(var.regions) : concat(
      [for n in r.nats : contains(["amd64", "arm64"], n.arch)],
      [for o in r.origins : contains(["amd64", "arm64"], o.arch)],
    )]))
    error_message = "arch must be \"amd64\" or \"arm64\" (the platforms make dist builds)."
  }
  validation {
    condition = alltrue(flatten([for r in values(var.regions) : concat(
      [for n in r.nats : n.name == null || can(regex("^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$", coalesce(n.name, "x")))],
      [for o in r.origins : o.name == null || can(regex("^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$", coalesce(o.name, "x")))],
    )]))
    error_message = "Server and origin names are 1-48 characters of lowercase letters, digits and '-'."
  }
  validation {
    condition = alltrue(flatten([for r in values(var.regions) : [
      for o in r.origins : can(regex("^([^:]*|\\[[0-9a-fA-F:]+\\]):([0-9]{1,5})$", o.listen)) && try(tonumber(regex(":([0-9]{1,5})$", o.listen)[0]) <= 65535, false)
    ]]))
    error_message = "An origin's listen is host:port (host may be empty or [ipv6]), port <= 65535."
  }
}

variable "postgres_url" {
  description = "The PostgreSQL database every origin replica shares (--store): postgres://user:password@host:5432/db?sslmode=verify-full. Sensitive: only in each origin's env file (mode 0600), never in the state or the output."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^postgres(ql)?://[^\\s']+$", var.postgres_url))
    error_message = "postgres_url must be a postgres:// or postgresql:// URL without spaces or single quotes."
  }
}

variable "admin_password" {
  description = "Password of the origin's admin user, created on the first start of the first replica (ORIGIN_ADMIN_PASSWORD; later changes do not change an existing user). null = that replica writes a random one to <data_dir>/<name>/admin-password. Sensitive."
  type        = string
  default     = null
  sensitive   = true
  validation {
    condition     = var.admin_password == null || can(regex("^[^'\\n\\r]{12,}$", coalesce(var.admin_password, "x")))
    error_message = "admin_password needs at least 12 characters and no single quotes or newlines."
  }
}

variable "origin_keys_dir" {
  description = "Local directory written by `origin keygen --out DIR`: its signing.key (Ed25519, what edges verify), jwt.key (admin tokens) and signing.pub are copied into every replica's data dir, so that replicas sign alike and accept each other's tokens. Set this or origin_keys. The files' contents never enter the state."
  type        = string
  default     = null
}

variable "origin_keys" {
  description = "The same three files' contents instead of a directory: { signing_key, jwt_key, public_key } (base64 text as keygen writes it). Sensitive."
  type = object({
    signing_key = string
    jwt_key     = string
    public_key  = string
  })
  default   = null
  sensitive = true
  validation {
    # base64decode() only returns UTF-8 text, so keys are checked by shape.
    condition = var.origin_keys == null || (
      can(regex("^[A-Za-z0-9+/]{86}==$", trimspace(try(var.origin_keys.signing_key, "")))) &&
      can(regex("^[A-Za-z0-9+/=]{24,}$", trimspace(try(var.origin_keys.jwt_key, "")))) &&
      can(regex("^[A-Za-z0-9+/]{43}=$", trimspace(try(var.origin_keys.public_key, ""))))
    )
    error_message = "origin_keys: signing_key is base64 of a 64-byte Ed25519 key, jwt_key base64 of at least 16 bytes, public_key base64 of 32 bytes (as `origin keygen` writes them)."
  }
}

variable "stream_replicas" {
  description = "JetStream replicas of the event stream (--stream-replicas): 3 keeps it through the loss of any one NATS server of its region. At most the smallest region's NATS cluster size."
  type        = number
  default     = 3
  validation {
    condition     = contains([1, 3, 5], var.stream_replicas)
    error_message = "stream_replicas must be 1, 3 or 5 (JetStream needs a majority of an odd count)."
  }
}

variable "nats_auth" {
  description = "NATS requires credentials (decentralised JWT auth, package natsauth of the origin). Needs origin_keys_dir holding, besides `origin keygen`'s files, nats-config.conf (`origin nats-config --data-dir DIR > DIR/nats-config.conf`: operator and account JWTs, public) and origin.creds (`origin nats-creds --data-dir DIR --role origin --out DIR/origin.creds`, secret: copied 0600 to every origin, --nats-creds). Edges get their own credential through the site module's nats_creds_dir (output edge_nats_creds_dir). false = NATS accepts any client: only on a private network."
  type        = bool
  default     = true
}

variable "nats_tls" {
  description = "TLS on the NATS client port: local paths of the servers' PEM certificate and key (one certificate naming every server's address) and of the CA bundle clients verify it with; verify_clients also requires client certificates from that CA. Origins get the CA as --nats-tls-ca and the client URLs become tls://. Files copied over SSH; contents never in the state. null = plain TCP."
  type = object({
    ca_file        = string
    cert_file      = string
    key_file       = string
    verify_clients = optional(bool, false)
  })
  default = null
  validation {
    condition     = var.nats_tls == null ? true : fileexists(var.nats_tls.ca_file) && fileexists(var.nats_tls.cert_file) && fileexists(var.nats_tls.key_file)
    error_message = "nats_tls.ca_file, cert_file and key_file must be readable local files."
  }
}

variable "nats_extra_config" {
  description = "Appended to every NATS server's config, e.g. TLS for clients, routes and gateways, or an authorization block (then put the credentials into nats_client_urls' consumers, e.g. nats://user:pass@host:4222). Sensitive, as it may hold passwords."
  type        = string
  default     = ""
  sensitive   = true
}

variable "origin_extra_env" {
  description = "More origin settings as ORIGIN_* environment variables (every origin flag has one, see `origin --help`), e.g. { ORIGIN_TOKEN_TTL = \"4h\" }; they come last in the env file, so they win over the module's own."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.origin_extra_env : can(regex("^ORIGIN_[A-Z0-9_]+$", k)) && !can(regex("['\\n\\r]", v))])
    error_message = "origin_extra_env keys are ORIGIN_<FLAG> names; values must not contain ' or newlines."
  }
}

variable "process_manager" {
  description = "\"systemd\": units keymesh-nats-<name> and keymesh-origin-<name> running as service_user (the SSH user needs root or passwordless sudo). \"none\": no service manager: <dir>/run.sh supervises each program (restarts it when it exits) as the SSH user, started by <dir>/start.sh and stopped by <dir>/stop.sh, which destroy runs."
  type        = string
  default     = "systemd"
  validation {
    condition     = contains(["systemd", "none"], var.process_manager)
    error_message = "process_manager must be \"systemd\" or \"none\"."
  }
}

variable "install_dir" {
  description = "Absolute directory on each host; server or replica <name> lives in <install_dir>/<name>/ (binary, env and config files, scripts)."
  type        = string
  default     = "/opt/keymesh"
  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", var.install_dir))
    error_message = "install_dir must be an absolute path of letters, digits, '.', '_', '-' and '/'."
  }
}

variable "data_dir" {
  description = "Absolute directory on each host for state: <data_dir>/<name>/ is a NATS server's JetStream store or an origin's --data-dir (its keys). Kept on destroy unless purge_on_destroy."
  type        = string
  default     = "/var/lib/keymesh"
  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", var.data_dir))
    error_message = "data_dir must be an absolute path of letters, digits, '.', '_', '-' and '/'."
  }
}

variable "purge_on_destroy" {
  description = "Also delete the data directories on destroy (the JetStream store goes with them; the store of record is PostgreSQL, from which an origin republishes). For throwaway environments."
  type        = bool
  default     = false
}

variable "service_user" {
  description = "User the systemd units run as (created when missing). Ignored for process_manager = \"none\"."
  type        = string
  default     = "keymesh"
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.service_user))
    error_message = "service_user must be a valid Unix user name."
  }
}

variable "dist_dir" {
  description = "Local directory with `make dist` output: <dist_dir>/linux_<arch>/origin and .../nats-server are copied to the hosts."
  type        = string
  validation {
    condition     = length(var.dist_dir) > 0
    error_message = "dist_dir must be set (the repository's dist/ after `make dist`)."
  }
}

variable "ssh_private_key_file" {
  description = "Local path of the SSH private key. null = use the SSH agent (SSH_AUTH_SOCK). A path, not the key, so the key never enters the state."
  type        = string
  default     = null
}

variable "ssh_host_keys" {
  description = "Expected SSH host public keys (\"ssh-ed25519 AAAA...\") by host; hosts not listed are not verified. Recommended."
  type        = map(string)
  default     = {}
}

variable "health_timeout_seconds" {
  description = "How long an install waits for a NATS server's /healthz or an origin's /health before failing the apply."
  type        = number
  default     = 60
  validation {
    condition     = var.health_timeout_seconds >= 5 && var.health_timeout_seconds <= 600
    error_message = "health_timeout_seconds must be between 5 and 600."
  }
}

variable "stop_timeout_seconds" {
  description = "How long a stop waits after SIGTERM before SIGKILL. Keep it above the origin's --drain-timeout (30s)."
  type        = number
  default     = 40
  validation {
    condition     = var.stop_timeout_seconds >= 1 && var.stop_timeout_seconds <= 600
    error_message = "stop_timeout_seconds must be between 1 and 600."
  }
}

variable "binary_url_template" {
  description = "Only for the cloud_init output: where a VM downloads its binary, with {arch} (amd64 | arm64) and {binary} (origin | nats-server) replaced, e.g. \"https://downloads.example.com/keymesh/1.0/linux_{arch}/{binary}\". null = the image already has it."
  type        = string
  default     = null
  validation {
    condition     = var.binary_url_template == null || can(regex("^https?://[^\\s']+$", coalesce(var.binary_url_template, "x")))
    error_message = "binary_url_template must be an http(s) URL without spaces or quotes."
  }
}
