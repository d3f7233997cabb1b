output "edge_endpoints" {
  description = "Site => the inference endpoints of its edges."
  value       = { for r, s in module.site : r => s.edge_endpoints }
}

output "origin_endpoints" {
  description = "The origin replicas' admin API (origin --server)."
  value       = module.control_plane.origin_endpoints
}

output "nats_client_urls" {
  description = "Region => its NATS cluster's client URLs."
  value       = module.control_plane.nats_client_urls
}

output "deployment_upstreams" {
  description = "The `upstreams` object of a deployment served at every site, each site with its own GPU servers."
  value       = merge([for s in module.site : s.deployment_upstreams]...)
}

output "upstream_flags" {
  description = "The same as flags of `origin deployments create NAME`."
  value       = flatten([for s in module.site : s.upstream_flags])
}
