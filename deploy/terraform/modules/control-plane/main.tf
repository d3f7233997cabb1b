# modules/control-plane: per region a NATS cluster with JetStream (routes
# between its servers, gateways to every other region), then the origin
# replicas, each on its region's cluster, all on one PostgreSQL and one key
# set. The NATS servers are installed first; an origin starts without NATS
# and connects when it can, but its events wait for JetStream.

locals {
  nats_list = flatten([for r, reg in var.regions : [for i, n in reg.nats : merge(n, {
    region  = r
    name    = coalesce(n.name, "${r}-nats-${i}")
    address = coalesce(n.address, n.host)
  })]])
  nats = { for n in local.nats_list : n.name => n }

  origin_list = flatten([for r, reg in var.regions : [for i, o in reg.origins : merge(o, {
    region      = r
    name        = coalesce(o.name, "${r}-origin-${i}")
    public_host = coalesce(o.public_host, o.host)
    listen_host = regex("^(.*):[0-9]+$", o.listen)[0]
    listen_port = tonumber(regex(":([0-9]+)$", o.listen)[0])
  })]])
  origins = { for o in local.origin_list : o.name => o }

  nats_scheme = var.nats_tls == null ? "nats" : "tls"
  client_urls = { for r, _ in var.regions : r => [
    for n in local.nats_list : "${local.nats_scheme}://${n.address}:${n.client_port}" if n.region == r
  ] }

  # NATS authentication: the operator config and the origins' credential,
  # written next to the origin keys by `origin nats-config` and
  # `origin nats-creds --role origin`.
  nats_auth_ok     = !var.nats_auth || (local.from_dir && fileexists("${coalesce(var.origin_keys_dir, "/nonexistent")}/nats-config.conf") && fileexists("${coalesce(var.origin_keys_dir, "/nonexistent")}/origin.creds"))
  nats_auth_config = var.nats_auth && local.nats_auth_ok ? file("${var.origin_keys_dir}/nats-config.conf") : ""
  origin_creds     = sensitive(var.nats_auth && local.nats_auth_ok ? file("${var.origin_keys_dir}/origin.creds") : "")
  nats_tls_files = var.nats_tls == null ? {} : {
    "ca.pem"   = { content = file(var.nats_tls.ca_file), mode = "0644" }
    "cert.pem" = { content = file(var.nats_tls.cert_file), mode = "0644" }
    "key.pem"  = { content = sensitive(file(var.nats_tls.key_file)), mode = "0600" }
  }

  # The keys of `origin keygen`: from a directory, or given as contents.
  from_dir    = var.origin_keys_dir != null
  signing_key = sensitive(local.from_dir ? file("${var.origin_keys_dir}/signing.key") : (var.origin_keys == null ? "" : var.origin_keys.signing_key))
  jwt_key     = sensitive(local.from_dir ? file("${var.origin_keys_dir}/jwt.key") : (var.origin_keys == null ? "" : var.origin_keys.jwt_key))
  # The public key is not secret. A conditional on the sensitive
  # var.origin_keys (even its null test) is sensitive on Terraform >= 1.10,
  # so the key is taken out of a value that is sensitive on every version
  # (coalesce() of the sensitive variable) and unmarked.
  public_key = trimspace(local.from_dir ? file("${var.origin_keys_dir}/signing.pub") : nonsensitive(coalesce(var.origin_keys, { signing_key = "", jwt_key = "", public_key = "" }).public_key))

  url = {
    for k in ["nats", "origin"] : k => var.binary_url_template == null ? {} : {
      for a in ["amd64", "arm64"] : a => replace(replace(var.binary_url_template, "{arch}", a), "{binary}", k == "nats" ? "nats-server" : "origin")
    }
  }
}

module "nats" {
  source = "../service"

  kind = "nats"
  instances = { for n, s in local.nats : n => {
    host       = s.host
    ssh_port   = s.ssh_port
    ssh_user   = s.ssh_user
    dir        = "${var.install_dir}/${n}"
    data_dir   = "${var.data_dir}/${n}"
    binary     = "${var.dist_dir}/linux_${s.arch}/nats-server"
    binary_url = lookup(local.url.nats, s.arch, null)
    args       = "-c ${var.install_dir}/${n}/nats.conf"
    # Up, with JetStream on: not waiting for the other servers lets the
    # first of a new cluster pass before its peers exist.
    health_url = "http://127.0.0.1:${s.monitor_port}/healthz?js-server-only=true"
  } }
  env = { for n, s in local.nats : n => "# keymesh NATS server ${n}: its config is ${var.install_dir}/${n}/nats.conf\n" }
  files = { for n, s in local.nats : n => merge({ for f, c in local.nats_tls_files : "${var.install_dir}/${n}/tls/${f}" => c }, {
    "${var.install_dir}/${n}/nats.conf" = {
      mode = "0600"
      content = templatefile("${path.module}/templates/nats.conf.tftpl", {
        name         = n
        region       = s.region
        listen_host  = s.listen_host
        client_port  = s.client_port
        cluster_port = s.cluster_port
        gateway_port = s.gateway_port
        monitor_port = s.monitor_port
        store_dir    = "${var.data_dir}/${n}"
        routes       = [for o in local.nats_list : "${o.address}:${o.cluster_port}" if o.region == s.region && o.name != n]
        gateways = length(var.regions) < 2 ? [] : [for r, _ in var.regions : {
          name = r
          urls = [for o in local.nats_list : "${o.address}:${o.gateway_port}" if o.region == r]
        } if r != s.region]
        auth  = local.nats_auth_config
        tls   = var.nats_tls == null ? null : { dir = "${var.install_dir}/${n}/tls", verify = var.nats_tls.verify_clients }
        extra = var.nats_extra_config
      })
    }
  }) }

  process_manager        = var.process_manager
  service_user           = var.service_user
  low_ports              = anytrue([for s in local.nats_list : min(s.client_port, s.cluster_port, s.gateway_port) < 1024])
  purge_on_destroy       = var.purge_on_destroy
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_host_keys          = var.ssh_host_keys
  health_timeout_seconds = var.health_timeout_seconds
  stop_timeout_seconds   = var.stop_timeout_seconds
}

module "origins" {
  source     = "../service"
  depends_on = [module.nats]

  kind = "origin"
  instances = { for n, o in local.origins : n => {
    host       = o.host
    ssh_port   = o.ssh_port
    ssh_user   = o.ssh_user
    dir        = "${var.install_dir}/${n}"
    data_dir   = "${var.data_dir}/${n}"
    binary     = "${var.dist_dir}/linux_${o.arch}/origin"
    binary_url = lookup(local.url.origin, o.arch, null)
    args       = ""
    health_url = "http://${contains(["", "0.0.0.0"], o.listen_host) ? "127.0.0.1" : (o.listen_host == "[::]" ? "[::1]" : o.listen_host)}:${o.listen_port}/health"
  } }
  env = { for n, o in local.origins : n => join("", [
    "# keymesh origin ${n} (region ${o.region}), rendered by terraform; mode 0600.\n",
    "# Every origin flag has an ORIGIN_<FLAG> variable (origin --help).\n",
    "ORIGIN_LISTEN='${o.listen}'\n",
    "ORIGIN_DATA_DIR='${var.data_dir}/${n}'\n",
    "ORIGIN_STORE='${var.postgres_url}'\n",
    "ORIGIN_NATS_URL='${join(",", local.client_urls[o.region])}'\n",
    "ORIGIN_STREAM_REPLICAS='${var.stream_replicas}'\n",
    var.nats_auth ? "ORIGIN_NATS_CREDS='${var.install_dir}/${n}/nats.creds'\n" : "",
    var.nats_tls == null ? "" : "ORIGIN_NATS_TLS_CA='${var.install_dir}/${n}/tls/nats-ca.pem'\n",
    var.admin_password == null ? "" : "ORIGIN_ADMIN_PASSWORD='${var.admin_password}'\n",
    join("", [for k, v in var.origin_extra_env : "${k}='${v}'\n"]),
  ]) }
  files = { for n, o in local.origins : n => merge({
    "${var.data_dir}/${n}/signing.key" = { mode = "0600", content = "${trimspace(local.signing_key)}\n" }
    "${var.data_dir}/${n}/jwt.key"     = { mode = "0600", content = "${trimspace(local.jwt_key)}\n" }
    "${var.data_dir}/${n}/signing.pub" = { mode = "0644", content = "${local.public_key}\n" }
    }, !var.nats_auth ? {} : {
    "${var.install_dir}/${n}/nats.creds" = { mode = "0600", content = local.origin_creds }
    }, var.nats_tls == null ? {} : {
    "${var.install_dir}/${n}/tls/nats-ca.pem" = local.nats_tls_files["ca.pem"]
  }) }

  process_manager        = var.process_manager
  service_user           = var.service_user
  low_ports              = anytrue([for o in local.origin_list : o.listen_port < 1024])
  purge_on_destroy       = var.purge_on_destroy
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_host_keys          = var.ssh_host_keys
  health_timeout_seconds = var.health_timeout_seconds
  stop_timeout_seconds   = var.stop_timeout_seconds
}
