output "site_name" {
  description = "The site name every edge was given (--site)."
  value       = var.site_name
}

output "edge_endpoints" {
  description = "Inference endpoint of each edge: the URLs clients (or a load balancer) send OpenAI-compatible requests to."
  value       = [for n, e in local.edges : "${local.scheme}://${e.public_host}:${e.listen_port}"]
}

output "edges" {
  description = "Per edge: host, endpoint, gossip address, install directory and how it is supervised."
  value = { for n, e in local.edges : n => {
    host           = e.host
    endpoint       = "${local.scheme}://${e.public_host}:${e.listen_port}"
    health_url     = "${local.scheme}://${e.public_host}:${e.listen_port}/health"
    gossip_address = local.gossip_on ? "${e.host}:${e.gossip_port}" : null
    install_dir    = e.dir
    data_dir       = e.data_dir
    service        = var.process_manager == "systemd" ? "${e.unit}.service" : "${e.dir}/start.sh (pid file ${e.pid_file})"
    log            = var.process_manager == "systemd" ? "journalctl -u ${e.unit}" : e.log_file
  } }
}

output "gossip_peers" {
  description = "host:port of every edge's gossip listener (pass to another site's gossip_join to join the rings). Empty when gossip is off."
  value       = local.gossip_on ? [for n, e in local.edges : "${e.host}:${e.gossip_port}"] : []
}

output "deployment_upstreams" {
  description = "This site's entry for a deployment's `upstreams` object on the origin: { <site_name> = [urls] }."
  value       = { (var.site_name) = var.upstream_urls }
}

output "upstream_flags" {
  description = "The same as --upstream flags for `origin deployments create|update`."
  value       = [for u in var.upstream_urls : "--upstream=${var.site_name}=${u}"]
}

output "cloud_init" {
  description = "A #cloud-config per edge with the same env file and systemd unit, for VMs created outside Terraform. Sensitive: it holds the gossip keys and secrets."
  sensitive   = true
  value = { for n, e in local.edges : n => templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    what       = "edge (site ${var.site_name})"
    name       = n
    site       = var.site_name
    dir        = e.dir
    data_dir   = e.data_dir
    env_file   = e.env_file
    env        = local.env[n]
    unit       = e.unit
    unit_file  = local.unit_file[n]
    user       = var.service_user
    binary     = "edge"
    binary_url = var.binary_url_template == null ? null : replace(var.binary_url_template, "%s", e.arch)
    extra_files = concat(
      var.tls == null ? [] : [
        { path = "${e.dir}/tls/cert.pem", mode = "0644", content = local.tls_cert },
        { path = "${e.dir}/tls/key.pem", mode = "0600", content = local.tls_key },
      ],
      try(var.tls.client_ca_file, null) == null ? [] : [
        { path = "${e.dir}/tls/client-ca.pem", mode = "0644", content = local.tls_ca },
      ],
    )
  }) }
}
