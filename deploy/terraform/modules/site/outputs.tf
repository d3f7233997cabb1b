output "site_name" {
  description = "The site name every edge was given (--site)."
  value       = var.site_name
}

output "edge_endpoints" {
  description = "Inference endpoint of each edge, in the order of var.edges: the URLs clients (or a load balancer) send OpenAI-compatible requests to."
  value       = [for e in local.edge_list : "${local.scheme}://${e.public_host}:${e.listen_port}"]
  precondition {
    condition     = alltrue([for n, f in local.nats_creds : f == null ? true : fileexists(f)])
    error_message = "nats_creds_dir lacks <edge name>.creds for an edge: write each with `origin nats-creds --data-dir KEYS --role edge --id <edge name> --out <nats_creds_dir>/<edge name>.creds`."
  }
}

output "edges" {
  description = "Per edge name: host, endpoint, gossip address, directories, how it is supervised and where it logs."
  value = { for n, e in local.edges : n => {
    host           = e.host
    endpoint       = "${local.scheme}://${e.public_host}:${e.listen_port}"
    health_url     = "${local.scheme}://${e.public_host}:${e.listen_port}/health"
    gossip_address = local.gossip_on ? "${e.gossip_host}:${e.gossip_port}" : null
    install_dir    = e.dir
    data_dir       = e.data_dir
    service        = module.edges.instances[n].service
    log            = module.edges.instances[n].log
  } }
}

output "gossip_peers" {
  description = "host:port of every edge's gossip listener, for another site's gossip_join (one ring across sites). Empty when gossip is off."
  value       = local.gossip_on ? [for e in local.edge_list : "${e.gossip_host}:${e.gossip_port}"] : []
}

output "deployment_upstreams" {
  description = "This site's entry of a deployment's `upstreams` object on the origin: { <site_name> = [urls] }."
  value       = { (var.site_name) = var.upstream_urls }
}

output "upstream_flags" {
  description = "The same as --upstream flags of `origin deployments create|update`."
  value       = [for u in var.upstream_urls : "--upstream=${var.site_name}=${u}"]
}

output "cloud_init" {
  description = "Per edge name, a #cloud-config with the same env file, TLS files and systemd unit, for VMs created outside Terraform (binary from binary_url_template, or already in the image). Sensitive: it holds the gossip keys and secrets."
  sensitive   = true
  value       = module.edges.cloud_init
}
