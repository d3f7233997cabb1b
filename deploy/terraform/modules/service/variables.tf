# ---------------------------------------------------------------------------
# modules/service — internal building block of modules/control-plane: one
# binary plus its config files on each of several SSH hosts, supervised by
# systemd or by start.sh/stop.sh (process_manager = "none").
# ---------------------------------------------------------------------------

variable "kind" {
  description = "What runs (\"origin\", \"nats\"): names units keymesh-<kind>-<name>."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.kind))
    error_message = "kind is 1-16 lowercase letters, digits and '-'."
  }
}

variable "instances" {
  description = "name => where and how one instance runs. dir and data_dir are absolute; binary is a local path; args are appended to the binary (no secrets there); health_url is probed on the host itself."
  type = map(object({
    host       = string
    ssh_port   = number
    ssh_user   = string
    dir        = string
    data_dir   = string
    binary     = string
    args       = string
    health_url = string
  }))
  validation {
    condition     = alltrue([for n, i in var.instances : can(regex("^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$", n))])
    error_message = "Instance names are 1-48 lowercase letters, digits and '-'."
  }
}

variable "files" {
  description = "name => { path => { content, mode } } written on the instance's host: the env file (<dir>/<kind>.env) and any other config. Contents never enter the state (only a hash does)."
  type = map(map(object({
    content = string
    mode    = string
  })))
  sensitive = true
}

variable "process_manager" {
  description = "\"systemd\" or \"none\" (start.sh / stop.sh with a pid file)."
  type        = string
  validation {
    condition     = contains(["systemd", "none"], var.process_manager)
    error_message = "process_manager must be \"systemd\" or \"none\"."
  }
}

variable "service_user" {
  description = "User systemd runs the service as (created when missing)."
  type        = string
}

variable "purge_on_destroy" {
  description = "Also delete data_dir on destroy."
  type        = bool
  default     = false
}

variable "ssh_private_key_file" {
  description = "Local path of the SSH private key; null = SSH agent."
  type        = string
  default     = null
}

variable "ssh_host_keys" {
  description = "Expected SSH host public keys by host."
  type        = map(string)
  default     = {}
}

variable "health_timeout_seconds" {
  description = "How long an install waits for health_url."
  type        = number
  default     = 60
}

variable "stop_timeout_seconds" {
  description = "SIGTERM to SIGKILL grace on stop."
  type        = number
  default     = 40
}

variable "binary_url_template" {
  description = "cloud-init only: URL of the binary, %s = instance name's arch is not known here, so the caller substitutes it; null = preinstalled."
  type        = map(string)
  default     = {}
}
