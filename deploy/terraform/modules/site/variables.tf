# ---------------------------------------------------------------------------
# modules/site — N keymesh edges at one GPU site, installed over SSH (see
# ../service for how), plus a cloud-init rendering of the same config.
# ---------------------------------------------------------------------------

variable "site_name" {
  description = "Site (region / GPU cluster) name, passed to every edge as --site; deployments select their upstream list by it. Lowercase letters, digits and '-', 1-32 characters."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", var.site_name))
    error_message = "site_name must be 1-32 characters of lowercase letters, digits and '-', starting and ending with a letter or digit."
  }
}

variable "edges" {
  description = <<-EOT
    The edge hosts of this site, one edge each (several entries may share a host
    when they differ in name and ports). Fields:
      host          SSH address (name or IP) the edge is installed on
      ssh_port      SSH port (22)
      ssh_user      SSH user (root); for process_manager = "systemd" it needs root or passwordless sudo
      arch          amd64 | arm64: which dist/linux_<arch>/edge to install
      name          unique edge name (default "<site_name>-edge-<index>"): gossip node name, unit and directory name
      listen        proxy listen address (0.0.0.0:8080)
      admin_listen  /status and metrics listen address, never public (127.0.0.1:9090)
      gossip_listen memberlist bind address (0.0.0.0:7946); used when gossip is enabled
      public_host   host name clients use, for the endpoint outputs (default: host)
  EOT
  type = list(object({
    host          = string
    ssh_port      = optional(number, 22)
    ssh_user      = optional(string, "root")
    arch          = optional(string, "amd64")
    name          = optional(string)
    listen        = optional(string, "0.0.0.0:8080")
    admin_listen  = optional(string, "127.0.0.1:9090")
    gossip_listen = optional(string, "0.0.0.0:7946")
    public_host   = optional(string)
  }))
  validation {
    condition     = length(var.edges) >= 1 && length(var.edges) <= 64
    error_message = "A site has between 1 and 64 edges."
  }
  validation {
    condition     = alltrue([for e in var.edges : can(regex("^[A-Za-z0-9.:_\\[\\]-]+$", e.host))])
    error_message = "Every edge needs a host: a DNS name or an IP address."
  }
  validation {
    condition     = alltrue([for e in var.edges : e.ssh_port >= 1 && e.ssh_port <= 65535 && floor(e.ssh_port) == e.ssh_port])
    error_message = "ssh_port must be an integer between 1 and 65535."
  }
  validation {
    condition     = alltrue([for e in var.edges : contains(["amd64", "arm64"], e.arch)])
    error_message = "arch must be \"amd64\" or \"arm64\" (the platforms make dist builds)."
  }
  validation {
    condition     = alltrue([for e in var.edges : e.name == null || can(regex("^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$", coalesce(e.name, "x")))])
    error_message = "An edge name is 1-48 characters of lowercase letters, digits and '-'."
  }
  validation {
    condition = alltrue(flatten([for e in var.edges : [
      for a in [e.listen, e.admin_listen, e.gossip_listen] : can(regex("^([^:]*|\\[[0-9a-fA-F:]+\\]):([0-9]{1,5})$", a)) && try(tonumber(regex(":([0-9]{1,5})$", a)[0]) <= 65535, false)
    ]]))
    error_message = "listen, admin_listen and gossip_listen must be host:port (host may be empty or [ipv6]), port <= 65535."
  }
}

variable "upstream_urls" {
  description = "Base URLs of this site's inference servers (vLLM, TGI, ...). Upstreams belong to deployments on the origin; the module outputs them as the deployment `upstreams` entry for this site (output deployment_upstreams) and as --upstream flags for `origin deployments create|update`."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for u in var.upstream_urls : can(regex("^https?://[^/\\s]+(/\\S*)?$", u))])
    error_message = "upstream_urls must be http:// or https:// URLs."
  }
}

variable "nats_urls" {
  description = "NATS client URLs of this site's region (nats:// or tls://, credentials may be embedded), e.g. module.control_plane.nats_client_urls[\"eu\"]."
  type        = list(string)
  validation {
    condition     = length(var.nats_urls) >= 1 && alltrue([for u in var.nats_urls : can(regex("^(nats|tls)://[^\\s,]+$", u))])
    error_message = "nats_urls needs at least one nats:// or tls:// URL (no spaces or commas)."
  }
}

variable "origin_public_key" {
  description = "The origin's Ed25519 public key, base64 (the content of <origin data-dir>/signing.pub, or GET /v1/signing-key)."
  type        = string
  validation {
    # base64decode() only returns UTF-8 text, so keys are checked by shape.
    condition     = can(regex("^[A-Za-z0-9+/]{43}=$", trimspace(var.origin_public_key)))
    error_message = "origin_public_key must be a base64 Ed25519 public key (44 characters, as in signing.pub)."
  }
}

variable "nats_creds_dir" {
  description = "Local directory holding <edge name>.creds for every edge of this site, written on the machine that holds the origin keys by `origin nats-creds --data-dir KEYS --role edge --id <edge name> --out DIR/<edge name>.creds` (the control plane's edge_nats_creds_dir output names the directory). Each file is copied to its edge only, as <dir>/nats.creds (mode 0600, --nats-creds); it may publish only that edge's own subjects. Its contents never enter the state. null = edges connect without credentials (a NATS that requires them refuses them)."
  type        = string
  default     = null
}

variable "nats_tls" {
  description = "TLS to NATS (tls:// URLs): local paths of the CA bundle the NATS servers' certificates chain to (--nats-tls-ca), and optionally a client certificate and key (--nats-tls-cert, --nats-tls-key) when the servers verify clients. Copied over SSH; contents never in the state. null = no TLS settings."
  type = object({
    ca_file   = string
    cert_file = optional(string)
    key_file  = optional(string)
  })
  default = null
  validation {
    condition     = var.nats_tls == null ? true : fileexists(var.nats_tls.ca_file) && ((try(var.nats_tls.cert_file, null) == null) == (try(var.nats_tls.key_file, null) == null)) && (try(var.nats_tls.cert_file, null) == null ? true : fileexists(var.nats_tls.cert_file) && fileexists(var.nats_tls.key_file))
    error_message = "nats_tls.ca_file must be a readable local file; cert_file and key_file go together and must be readable."
  }
}

variable "tls" {
  description = "HTTPS on the proxy listener: local paths of a PEM certificate and key, and optionally a CA bundle that clients' certificates must chain to (mutual TLS). The files are copied over SSH; their contents never enter the state. null = plain HTTP."
  type = object({
    cert_file      = string
    key_file       = string
    client_ca_file = optional(string)
  })
  default = null
  validation {
    condition     = var.tls == null ? true : fileexists(var.tls.cert_file) && fileexists(var.tls.key_file) && (var.tls.client_ca_file == null ? true : fileexists(var.tls.client_ca_file))
    error_message = "tls.cert_file, tls.key_file (and tls.client_ca_file when set) must be readable local files."
  }
}

variable "gossip_keys" {
  description = "Base64 AES keys (16, 24 or 32 bytes, e.g. `openssl rand -base64 32`) encrypting the edges' memberlist gossip (--gossip-key). The first encrypts, all are accepted: rotate by adding the new key second, apply, moving it first, apply, removing the old one, apply (README). Empty = gossip off: each edge relies on NATS alone."
  type        = list(string)
  default     = []
  sensitive   = true
  validation {
    condition     = alltrue([for k in var.gossip_keys : can(regex("^([A-Za-z0-9+/]{22}==|[A-Za-z0-9+/]{32}|[A-Za-z0-9+/]{43}=)$", k))])
    error_message = "Every gossip key must be base64 of 16, 24 or 32 random bytes (e.g. `openssl rand -base64 32`)."
  }
}

variable "gossip_join" {
  description = "Extra gossip peers (host:port) beyond this site's own edges, e.g. edges of other sites to join their rings into one. Used only when gossip_keys is non-empty."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for p in var.gossip_join : can(regex("^[A-Za-z0-9.\\[\\]:_-]+:[0-9]{1,5}$", p))])
    error_message = "gossip_join entries must be host:port."
  }
}

variable "secrets" {
  description = "Edge-local upstream credentials for deployments with upstream_auth mode \"inject\", per project: \"<project>/<secret>\" => value, exported as EDGE_SECRET_<PROJECT>__<SECRET> (upper case, '-' and '.' as '_'); a deployment reads only its own project's. Never sent to the origin. Values must not contain single quotes or newlines."
  type        = map(string)
  default     = {}
  sensitive   = true
  validation {
    condition     = alltrue([for k, v in var.secrets : can(regex("^[a-z0-9]+(-[a-z0-9]+)*/[A-Za-z0-9][A-Za-z0-9_.-]*$", k)) && !can(regex("['\\n\\r]", v))])
    error_message = "Secret keys are \"<project>/<secret>\": a project name of lower-case letters, digits and single inner '-' (others have no environment form: use the edge's --secrets-dir), a secret name of letters, digits, '_', '.' and '-'; values must not contain ' or newlines."
  }
}

variable "extra_env" {
  description = "More edge settings as EDGE_* environment variables (every edge flag has one, see `edge --help`), e.g. { EDGE_FAIL_MODE = \"open-cached\" }; they come last in the env file, so they win over the module's own."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.extra_env : can(regex("^EDGE_[A-Z0-9_]+$", k)) && !can(regex("['\\n\\r]", v))])
    error_message = "extra_env keys are EDGE_<FLAG> names; values must not contain ' or newlines."
  }
}

variable "process_manager" {
  description = "\"systemd\": a keymesh-edge-<name> unit running as service_user (the SSH user needs root or passwordless sudo). \"none\": no service manager: <dir>/run.sh supervises the edge (restarts it when it exits) as the SSH user, started by <dir>/start.sh and stopped by <dir>/stop.sh, which destroy runs."
  type        = string
  default     = "systemd"
  validation {
    condition     = contains(["systemd", "none"], var.process_manager)
    error_message = "process_manager must be \"systemd\" or \"none\"."
  }
}

variable "install_dir" {
  description = "Absolute directory on each host; edge <name> lives in <install_dir>/<name>/ (binary, env file, scripts, log, pid file)."
  type        = string
  default     = "/opt/keymesh"
  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", var.install_dir))
    error_message = "install_dir must be an absolute path of letters, digits, '.', '_', '-' and '/'."
  }
}

variable "data_dir" {
  description = "Absolute directory on each host for edge state; edge <name> uses <data_dir>/<name>/ (--data-dir). Kept on destroy unless purge_on_destroy."
  type        = string
  default     = "/var/lib/keymesh"
  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", var.data_dir))
    error_message = "data_dir must be an absolute path of letters, digits, '.', '_', '-' and '/'."
  }
}

variable "purge_on_destroy" {
  description = "Also delete each edge's data directory on destroy."
  type        = bool
  default     = false
}

variable "service_user" {
  description = "User the systemd unit runs the edge as (created when missing). Ignored for process_manager = \"none\" (the SSH user runs it)."
  type        = string
  default     = "keymesh"
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.service_user))
    error_message = "service_user must be a valid Unix user name."
  }
}

variable "dist_dir" {
  description = "Local directory with `make dist` output: <dist_dir>/linux_<arch>/edge is copied to each host."
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
  description = "Expected SSH host public keys (\"ssh-ed25519 AAAA...\"), by edge host; hosts not listed are not verified. Recommended."
  type        = map(string)
  default     = {}
}

variable "health_timeout_seconds" {
  description = "How long an install waits for an edge's /health to answer before failing the apply."
  type        = number
  default     = 60
  validation {
    condition     = var.health_timeout_seconds >= 5 && var.health_timeout_seconds <= 600
    error_message = "health_timeout_seconds must be between 5 and 600."
  }
}

variable "stop_timeout_seconds" {
  description = "How long a stop waits after SIGTERM (the edge drains in-flight requests and streams) before SIGKILL. Keep it above the edge's --drain-timeout (30s)."
  type        = number
  default     = 40
  validation {
    condition     = var.stop_timeout_seconds >= 1 && var.stop_timeout_seconds <= 600
    error_message = "stop_timeout_seconds must be between 1 and 600."
  }
}

variable "binary_url_template" {
  description = "Only for the cloud_init output: where a VM downloads the edge binary, with {arch} (amd64 | arm64) and {binary} (edge) replaced, e.g. \"https://downloads.example.com/keymesh/1.0/linux_{arch}/{binary}\" (the layout of `make dist`). null = the image already has <install_dir>/<name>/bin/edge."
  type        = string
  default     = null
  validation {
    condition     = var.binary_url_template == null || can(regex("^https?://[^\\s']+$", coalesce(var.binary_url_template, "x")))
    error_message = "binary_url_template must be an http(s) URL without spaces or quotes."
  }
}
