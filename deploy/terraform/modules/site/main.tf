# modules/site: N edges at one GPU site. The edge env file and TLS files are
# rendered here; modules/service installs, supervises and removes them.

locals {
  gossip_on = nonsensitive(length(var.gossip_keys) > 0)
  scheme    = var.tls == null ? "http" : "https"

  edge_list = [for i, e in var.edges : merge(e, {
    name        = coalesce(e.name, "${var.site_name}-edge-${i}")
    public_host = coalesce(e.public_host, e.host)
    listen_host = regex("^(.*):[0-9]+$", e.listen)[0]
    listen_port = tonumber(regex(":([0-9]+)$", e.listen)[0])
    gossip_port = tonumber(regex(":([0-9]+)$", e.gossip_listen)[0])
    # Where peers reach its gossip listener: its address, or the host's
    # when it listens on every interface.
    gossip_host = contains(["", "0.0.0.0", "[::]"], regex("^(.*):[0-9]+$", e.gossip_listen)[0]) ? e.host : regex("^(.*):[0-9]+$", e.gossip_listen)[0]
  })]

  # Each edge's own NATS credential (origin nats-creds --role edge --id NAME).
  nats_creds = { for e in local.edge_list : e.name => var.nats_creds_dir == null ? null : "${var.nats_creds_dir}/${e.name}.creds" }
  nats_tls_files = var.nats_tls == null ? {} : merge(
    { "tls/nats-ca.pem" = { content = file(var.nats_tls.ca_file), mode = "0644" } },
    try(var.nats_tls.cert_file, null) == null ? {} : {
      "tls/nats-cert.pem" = { content = file(var.nats_tls.cert_file), mode = "0644" }
      "tls/nats-key.pem"  = { content = sensitive(file(var.nats_tls.key_file)), mode = "0600" }
    },
  )

  edges = { for e in local.edge_list : e.name => merge(e, {
    dir      = "${var.install_dir}/${e.name}"
    data_dir = "${var.data_dir}/${e.name}"
    # The health check runs on the host: a wildcard listener is probed on
    # loopback.
    probe_host = contains(["", "0.0.0.0"], e.listen_host) ? "127.0.0.1" : (e.listen_host == "[::]" ? "[::1]" : e.listen_host)
    # Every other edge of the site, then the extra peers.
    gossip_join = concat([for o in local.edge_list : "${o.gossip_host}:${o.gossip_port}" if o.name != e.name], var.gossip_join)
  }) }

  tls_files = var.tls == null ? {} : merge(
    {
      "tls/cert.pem" = { content = file(var.tls.cert_file), mode = "0644" }
      "tls/key.pem"  = { content = sensitive(file(var.tls.key_file)), mode = "0600" }
    },
    try(var.tls.client_ca_file, null) == null ? {} : {
      "tls/client-ca.pem" = { content = file(var.tls.client_ca_file), mode = "0644" }
    },
  )
}

module "edges" {
  source = "../service"

  kind = "edge"
  instances = { for n, e in local.edges : n => {
    host       = e.host
    ssh_port   = e.ssh_port
    ssh_user   = e.ssh_user
    dir        = e.dir
    data_dir   = e.data_dir
    binary     = "${var.dist_dir}/linux_${e.arch}/edge"
    binary_url = var.binary_url_template == null ? null : replace(replace(var.binary_url_template, "{arch}", e.arch), "{binary}", "edge")
    args       = ""
    health_url = "${local.scheme}://${e.probe_host}:${e.listen_port}/health"
  } }
  env = { for n, e in local.edges : n => templatefile("${path.module}/templates/edge.env.tftpl", {
    name              = n
    site              = var.site_name
    dir               = e.dir
    listen            = e.listen
    admin_listen      = e.admin_listen
    gossip_listen     = e.gossip_listen
    nats_url          = join(",", var.nats_urls)
    origin_public_key = trimspace(var.origin_public_key)
    data_dir          = e.data_dir
    gossip_keys       = var.gossip_keys
    gossip_join       = e.gossip_join
    tls               = var.tls != null
    tls_client_ca     = try(var.tls.client_ca_file, null) != null
    nats_creds        = local.nats_creds[n] != null
    nats_tls_ca       = var.nats_tls != null
    nats_tls_cert     = try(var.nats_tls.cert_file, null) != null
    secrets           = var.secrets
    extra_env         = var.extra_env
  }) }
  files = { for n, e in local.edges : n => merge(
    { for p, f in merge(local.tls_files, local.nats_tls_files) : "${e.dir}/${p}" => f },
    local.nats_creds[n] == null ? {} : { "${e.dir}/nats.creds" = { content = sensitive(fileexists(local.nats_creds[n]) ? file(local.nats_creds[n]) : ""), mode = "0600" } },
  ) }

  process_manager        = var.process_manager
  service_user           = var.service_user
  low_ports              = anytrue([for e in local.edge_list : e.listen_port < 1024])
  purge_on_destroy       = var.purge_on_destroy
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_host_keys          = var.ssh_host_keys
  health_timeout_seconds = var.health_timeout_seconds
  stop_timeout_seconds   = var.stop_timeout_seconds
}
