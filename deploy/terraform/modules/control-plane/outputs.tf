output "nats_client_urls" {
  description = "Region => the client URLs of its NATS cluster: a site's nats_urls (edges use their own region's cluster). Depends on the NATS servers being installed, so edges that use it are installed after them (and removed before them)."
  value       = local.client_urls
  depends_on  = [module.nats]
  precondition {
    condition     = (var.origin_keys == null) != (var.origin_keys_dir == null)
    error_message = "Set exactly one of origin_keys_dir (a directory written by `origin keygen --out DIR`) and origin_keys."
  }
  precondition {
    condition     = can(regex("^[A-Za-z0-9+/]{43}=$", local.public_key)) && can(regex("^[A-Za-z0-9+/]{86}==$", trimspace(local.signing_key)))
    error_message = "The origin keys are not what `origin keygen` writes (signing.pub: 44 base64 characters, signing.key: 88)."
  }
  precondition {
    condition     = local.nats_auth_ok
    error_message = "nats_auth needs origin_keys_dir with nats-config.conf and origin.creds: run `origin nats-config --data-dir DIR > DIR/nats-config.conf` and `origin nats-creds --data-dir DIR --role origin --out DIR/origin.creds` (or set nats_auth = false on a private network)."
  }
  precondition {
    condition     = var.stream_replicas <= min([for r in values(var.regions) : length(r.nats)]...)
    error_message = "stream_replicas is larger than a region's NATS cluster: JetStream could not place the stream there."
  }
}

output "origin_public_key" {
  description = "The origin's Ed25519 public key (signing.pub): every site's origin_public_key."
  value       = local.public_key
}

output "edge_nats_creds_dir" {
  description = "Where a site's nats_creds_dir should point: <origin_keys_dir>/nats-creds, for the files of `origin nats-creds --data-dir <origin_keys_dir> --role edge --id <edge name> --out <this>/<edge name>.creds`. null without nats_auth or origin_keys_dir."
  value       = var.nats_auth && local.from_dir ? "${var.origin_keys_dir}/nats-creds" : null
}

output "origin_endpoints" {
  description = "The origin replicas' REST admin API (origin --server, or a load balancer's backends), in region order."
  value       = [for o in local.origin_list : "http://${o.public_host}:${o.listen_port}"]
}

output "nats_servers" {
  description = "Per NATS server: region, host, client URL, route and gateway addresses, how it is supervised and where it logs."
  value = { for n, s in local.nats : n => {
    region     = s.region
    host       = s.host
    client_url = "nats://${s.address}:${s.client_port}"
    route      = "${s.address}:${s.cluster_port}"
    gateway    = "${s.address}:${s.gateway_port}"
    service    = module.nats.instances[n].service
    log        = module.nats.instances[n].log
  } }
}

output "origins" {
  description = "Per origin replica: region, host, endpoint, NATS URLs, how it is supervised and where it logs."
  value = { for n, o in local.origins : n => {
    region   = o.region
    host     = o.host
    endpoint = "http://${o.public_host}:${o.listen_port}"
    nats_url = join(",", local.client_urls[o.region])
    service  = module.origins.instances[n].service
    log      = module.origins.instances[n].log
  } }
}

output "cloud_init" {
  description = "Per NATS server and origin replica name, a #cloud-config with the same config files, keys and systemd unit, for VMs created outside Terraform. Sensitive: origins' hold the PostgreSQL URL and the signing key."
  sensitive   = true
  value       = merge(module.nats.cloud_init, module.origins.cloud_init)
}
