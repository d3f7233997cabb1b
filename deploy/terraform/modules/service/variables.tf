# ---------------------------------------------------------------------------
# modules/service — the building block of modules/site and
# modules/control-plane: one program with its environment and config files
# on each of several SSH hosts, supervised by systemd or, with
# process_manager = "none", by a plain supervisor script. Callers validate
# what users give them; this module checks only its own invariants.
# ---------------------------------------------------------------------------

variable "kind" {
  description = "What runs: \"edge\", \"origin\" or \"nats\". Names the binary (<dir>/bin/<kind>), the env file (<dir>/<kind>.env) and the unit (keymesh-<kind>-<name>)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.kind))
    error_message = "kind is 1-16 lowercase letters, digits and '-', starting with a letter."
  }
}

variable "instances" {
  description = <<-EOT
    name => one instance. Fields:
      host        SSH address (DNS name or IP)
      ssh_port    SSH port
      ssh_user    SSH user: root, or a user with passwordless sudo for process_manager = "systemd"
      dir         absolute install directory (binary, env file, scripts, and for "none" the log and pid file)
      data_dir    absolute state directory, writable by the service (mode 0700)
      binary      local path of the linux binary to install (from `make dist`)
      binary_url  where a cloud-init VM downloads the binary (null: the image has it at <dir>/bin/<kind>)
      args        command-line arguments (never secrets: they show in ps; secrets go in env)
      health_url  http(s) URL probed on the host itself after every (re)start
  EOT
  type = map(object({
    host       = string
    ssh_port   = number
    ssh_user   = string
    dir        = string
    data_dir   = string
    binary     = string
    binary_url = optional(string)
    args       = string
    health_url = string
  }))
  validation {
    condition     = alltrue([for n, i in var.instances : can(regex("^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$", n))])
    error_message = "Instance names are 1-48 lowercase letters, digits and '-'."
  }
  validation {
    condition     = alltrue([for n, i in var.instances : can(regex("^https?://([^/:]+|\\[[0-9a-fA-F:]+\\]):[0-9]+/", i.health_url))])
    error_message = "health_url must be http(s)://host:port/path."
  }
}

variable "env" {
  description = "name => the instance's environment file (KEY='value' lines, read by systemd's EnvironmentFile= and by the supervisor script). Mode 0600, owned by the SSH user."
  type        = map(string)
  sensitive   = true
}

variable "files" {
  description = "name => { absolute path => { content, mode } }: config files the service reads (written atomically, owned by service_user under systemd). Only a hash of the contents enters the state."
  type = map(map(object({
    content = string
    mode    = string
  })))
  default   = {}
  sensitive = true
}

variable "process_manager" {
  description = "\"systemd\" (a keymesh-<kind>-<name> unit) or \"none\" (<dir>/run.sh supervising the program, started by <dir>/start.sh, stopped by <dir>/stop.sh)."
  type        = string
  validation {
    condition     = contains(["systemd", "none"], var.process_manager)
    error_message = "process_manager must be \"systemd\" or \"none\"."
  }
}

variable "service_user" {
  description = "User the systemd unit runs as, created (system, no login) when missing. Unused with process_manager = \"none\": the SSH user runs it."
  type        = string
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.service_user))
    error_message = "service_user must be a valid Unix user name."
  }
}

variable "low_ports" {
  description = "Let the systemd unit bind ports below 1024 (CAP_NET_BIND_SERVICE) without running as root."
  type        = bool
  default     = false
}

variable "purge_on_destroy" {
  description = "Also delete data_dir on destroy. Off by default: state (an edge's applied revision, NATS's JetStream store) survives a reinstall."
  type        = bool
  default     = false
}

variable "ssh_private_key_file" {
  description = "Local path of the SSH private key; null = the SSH agent (SSH_AUTH_SOCK). A path, so that the key never enters the state."
  type        = string
  default     = null
}

variable "ssh_host_keys" {
  description = "Expected SSH host public keys (\"ssh-ed25519 AAAA...\") by host; hosts not listed are not verified."
  type        = map(string)
  default     = {}
}

variable "health_timeout_seconds" {
  description = "How long an install waits for health_url before failing the apply."
  type        = number
  default     = 60
  validation {
    condition     = var.health_timeout_seconds >= 5 && var.health_timeout_seconds <= 600
    error_message = "health_timeout_seconds must be between 5 and 600."
  }
}

variable "stop_timeout_seconds" {
  description = "How long a stop waits after SIGTERM (drain) before SIGKILL."
  type        = number
  default     = 40
  validation {
    condition     = var.stop_timeout_seconds >= 1 && var.stop_timeout_seconds <= 600
    error_message = "stop_timeout_seconds must be between 1 and 600."
  }
}

variable "max_log_bytes" {
  description = "process_manager = \"none\": at start, a log larger than this is moved to <log>.1."
  type        = number
  default     = 67108864
}
