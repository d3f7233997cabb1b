variable "regions" {
  description = "Region (= site) name => its hosts: nats (3 NATS servers), origins (origin replicas; any region may have none), edges (keymesh edges in front of the GPU servers) and upstreams (the site's inference servers, e.g. vLLM). The default is an illustration on private addresses; give your own in a .tfvars file."
  type = map(object({
    nats      = list(string)
    origins   = optional(list(string), [])
    edges     = list(string)
    upstreams = list(string)
  }))
  default = {
    eu = {
      nats      = ["10.10.0.11", "10.10.0.12", "10.10.0.13"]
      origins   = ["10.10.0.21", "10.10.0.22"]
      edges     = ["10.10.1.11", "10.10.1.12"]
      upstreams = ["http://10.10.2.11:8000", "http://10.10.2.12:8000"]
    }
    us = {
      nats      = ["10.20.0.11", "10.20.0.12", "10.20.0.13"]
      origins   = ["10.20.0.21"]
      edges     = ["10.20.1.11", "10.20.1.12"]
      upstreams = ["http://10.20.2.11:8000"]
    }
    ap = {
      nats      = ["10.30.0.11", "10.30.0.12", "10.30.0.13"]
      edges     = ["10.30.1.11"]
      upstreams = ["http://10.30.2.11:8000", "http://10.30.2.12:8000"]
    }
  }
}

variable "postgres_url" {
  description = "The PostgreSQL database all origin replicas share, e.g. postgres://keymesh:...@db.internal:5432/keymesh?sslmode=verify-full."
  type        = string
  sensitive   = true
}

variable "admin_password" {
  description = "Password of the origin's admin user on the first start; null = a random one in <data_dir>/<first origin>/admin-password."
  type        = string
  default     = null
  sensitive   = true
}

variable "gossip_keys" {
  description = "Base64 AES keys for the edges' gossip (`openssl rand -base64 32`), the first encrypts; see the README runbook for rotation."
  type        = list(string)
  sensitive   = true
}

variable "origin_keys_dir" {
  description = "Directory written by `origin keygen --out DIR` (signing.key, jwt.key, signing.pub)."
  type        = string
  default     = "keys"
}

variable "dist_dir" {
  description = "The repository's dist/ after `make dist`."
  type        = string
  default     = "../../../../dist"
}

variable "ssh_user" {
  description = "SSH user on every host: root, or one with passwordless sudo."
  type        = string
  default     = "root"
}

variable "ssh_private_key_file" {
  description = "Local path of the SSH private key; null = the SSH agent."
  type        = string
  default     = null
}

variable "ssh_host_keys" {
  description = "Expected SSH host public keys by host address (recommended)."
  type        = map(string)
  default     = {}
}
