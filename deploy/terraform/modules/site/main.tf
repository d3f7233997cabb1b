# modules/site: N edges at one GPU site. Per edge, two terraform_data
# resources:
#   install[name]  directories, supervisor scripts or systemd unit; its
#                  destroy-time provisioner stops the edge and removes them.
#                  Replaced only when the host / paths / process manager change.
#   config[name]   binary, env file, TLS files; restarts the edge and waits
#                  for /health. Replaced (= rolling restart with
#                  -parallelism=1) whenever the binary or the config changes.

locals {
  gossip_on = nonsensitive(length(var.gossip_keys) > 0)

  edge_list = [for i, e in var.edges : merge(e, {
    name        = coalesce(e.name, "${var.site_name}-${i}")
    public_host = coalesce(e.public_host, e.host)
    listen_port = tonumber(regex(":([0-9]+)$", e.listen)[0])
    listen_host = regex("^(.*):[0-9]+$", e.listen)[0]
    gossip_port = tonumber(regex(":([0-9]+)$", e.gossip_listen)[0])
  })]

  edges = { for e in local.edge_list : e.name => merge(e, {
    dir      = "${var.install_dir}/${e.name}"
    data_dir = "${var.data_dir}/${e.name}"
    bin      = "${var.install_dir}/${e.name}/bin/edge"
    env_file = "${var.install_dir}/${e.name}/edge.env"
    pid_file = "${var.install_dir}/${e.name}/edge.pid"
    log_file = "${var.install_dir}/${e.name}/edge.log"
    unit     = "keymesh-edge-${e.name}"
    probe_host = contains(["", "0.0.0.0"], regex("^(.*):[0-9]+$", e.listen)[0]) ? "127.0.0.1" : (
    regex("^(.*):[0-9]+$", e.listen)[0] == "[::]" ? "[::1]" : regex("^(.*):[0-9]+$", e.listen)[0])
    local_binary = "${var.dist_dir}/linux_${e.arch}/edge"
    gossip_join = concat(
      [for o in local.edge_list : "${o.host}:${o.gossip_port}" if o.name != e.name],
      var.gossip_join,
    )
  }) }

  scheme = var.tls == null ? "http" : "https"

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
    secrets           = var.secrets
    extra_env         = var.extra_env
  }) }

  start_sh = { for n, e in local.edges : n => templatefile("${path.module}/templates/start.sh.tftpl", {
    name     = "edge ${n}", dir = e.dir, bin = e.bin, args = "", env_file = e.env_file,
    pid_file = e.pid_file, log_file = e.log_file, workdir = e.dir
  }) }

  stop_sh = { for n, e in local.edges : n => templatefile("${path.module}/templates/stop.sh.tftpl", {
    name         = "edge ${n}", dir = e.dir, bin = e.bin, pid_file = e.pid_file,
    stop_timeout = var.stop_timeout_seconds
  }) }

  health_sh = { for n, e in local.edges : n => templatefile("${path.module}/templates/health.sh.tftpl", {
    name       = "edge ${n}"
    url        = "${local.scheme}://${e.probe_host}:${e.listen_port}/health"
    probe_host = trim(e.probe_host, "[]")
    probe_port = e.listen_port
    timeout    = var.health_timeout_seconds
    log_file   = var.process_manager == "none" ? e.log_file : ""
    unit       = e.unit
  }) }

  unit_file = { for n, e in local.edges : n => templatefile("${path.module}/templates/edge.service.tftpl", {
    name    = n, site = var.site_name, user = var.service_user, env_file = e.env_file,
    workdir = e.dir, bin = e.bin, data_dir = e.data_dir, stop_timeout = var.stop_timeout_seconds
  }) }

  tls_cert = var.tls == null ? "# tls off\n" : file(var.tls.cert_file)
  tls_key  = var.tls == null ? "# tls off\n" : sensitive(file(var.tls.key_file))
  tls_ca   = try(var.tls.client_ca_file, null) == null ? "# no client ca\n" : file(var.tls.client_ca_file)
  tls_hash = var.tls == null ? "" : nonsensitive(sha256(join("\n", [
    filesha256(var.tls.cert_file), filesha256(var.tls.key_file),
    try(filesha256(var.tls.client_ca_file), ""),
  ])))
}

resource "terraform_data" "install" {
  for_each = local.edges

  # Everything the destroy-time provisioner needs: it may only use self.
  input = {
    name            = each.key
    host            = each.value.host
    ssh_port        = each.value.ssh_port
    ssh_user        = each.value.ssh_user
    key_file        = var.ssh_private_key_file
    host_key        = lookup(var.ssh_host_keys, each.value.host, null)
    dir             = each.value.dir
    data_dir        = each.value.data_dir
    unit            = each.value.unit
    process_manager = var.process_manager
    service_user    = var.service_user
    purge           = var.purge_on_destroy
  }
  triggers_replace = [
    each.value.host, each.value.ssh_port, each.value.dir, each.value.data_dir,
    var.process_manager, var.service_user,
    sha256(join("\n", [local.start_sh[each.key], local.stop_sh[each.key], local.health_sh[each.key], local.unit_file[each.key]])),
  ]

  connection {
    type        = "ssh"
    host        = self.input.host
    port        = self.input.ssh_port
    user        = self.input.ssh_user
    private_key = self.input.key_file == null ? null : file(self.input.key_file)
    agent       = self.input.key_file == null
    host_key    = self.input.host_key
    timeout     = "2m"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "SUDO=''; if [ \"${self.input.process_manager}\" = systemd ] && [ \"$(id -u)\" != 0 ]; then SUDO='sudo -n'; fi",
      "$SUDO mkdir -p '${self.input.dir}/bin' '${self.input.dir}/tls' '${self.input.data_dir}'",
      "$SUDO chown -R \"$(id -un)\" '${self.input.dir}'",
      "chmod 0755 '${self.input.dir}' && chmod 0700 '${self.input.dir}/tls'",
    ]
  }

  provisioner "file" {
    content     = local.start_sh[each.key]
    destination = "${each.value.dir}/start.sh"
  }
  provisioner "file" {
    content     = local.stop_sh[each.key]
    destination = "${each.value.dir}/stop.sh"
  }
  provisioner "file" {
    content     = local.health_sh[each.key]
    destination = "${each.value.dir}/health.sh"
  }
  provisioner "file" {
    content     = local.unit_file[each.key]
    destination = "${each.value.dir}/${each.value.unit}.service"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "chmod 0755 '${self.input.dir}/start.sh' '${self.input.dir}/stop.sh' '${self.input.dir}/health.sh'",
      "if [ '${self.input.process_manager}' = systemd ]; then",
      "  SUDO=''; [ \"$(id -u)\" = 0 ] || SUDO='sudo -n'",
      "  id -u '${self.input.service_user}' >/dev/null 2>&1 || $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin '${self.input.service_user}'",
      "  $SUDO chown -R '${self.input.service_user}' '${self.input.data_dir}'",
      "  $SUDO install -m 0644 '${self.input.dir}/${self.input.unit}.service' '/etc/systemd/system/${self.input.unit}.service'",
      "  $SUDO systemctl daemon-reload",
      "  $SUDO systemctl enable '${self.input.unit}.service'",
      "fi",
    ]
  }

  provisioner "remote-exec" {
    when = destroy
    inline = [
      "set -eu",
      "if [ '${self.input.process_manager}' = systemd ]; then",
      "  SUDO=''; [ \"$(id -u)\" = 0 ] || SUDO='sudo -n'",
      "  $SUDO systemctl disable --now '${self.input.unit}.service' || true",
      "  $SUDO rm -f '/etc/systemd/system/${self.input.unit}.service'",
      "  $SUDO systemctl daemon-reload",
      "elif [ -x '${self.input.dir}/stop.sh' ]; then",
      "  '${self.input.dir}/stop.sh'",
      "fi",
      "SUDO=''; [ '${self.input.process_manager}' != systemd ] || [ \"$(id -u)\" = 0 ] || SUDO='sudo -n'",
      "$SUDO rm -rf '${self.input.dir}'",
      "if [ '${self.input.purge}' = true ]; then $SUDO rm -rf '${self.input.data_dir}'; fi",
      "echo 'edge ${self.input.name} removed'",
    ]
  }
}

resource "terraform_data" "config" {
  for_each = local.edges

  input = terraform_data.install[each.key].input
  triggers_replace = [
    terraform_data.install[each.key].id,
    filesha256(each.value.local_binary),
    nonsensitive(sha256(local.env[each.key])),
    local.tls_hash,
  ]

  connection {
    type        = "ssh"
    host        = self.input.host
    port        = self.input.ssh_port
    user        = self.input.ssh_user
    private_key = self.input.key_file == null ? null : file(self.input.key_file)
    agent       = self.input.key_file == null
    host_key    = self.input.host_key
    timeout     = "2m"
  }

  provisioner "file" {
    source      = each.value.local_binary
    destination = "${each.value.dir}/bin/edge.new"
  }
  provisioner "file" {
    content     = local.env[each.key]
    destination = "${each.value.dir}/edge.env.new"
  }
  provisioner "file" {
    content     = local.tls_cert
    destination = "${each.value.dir}/tls/cert.pem"
  }
  provisioner "file" {
    content     = local.tls_key
    destination = "${each.value.dir}/tls/key.pem"
  }
  provisioner "file" {
    content     = local.tls_ca
    destination = "${each.value.dir}/tls/client-ca.pem"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "cd '${self.input.dir}'",
      "chmod 0600 edge.env.new tls/key.pem && chmod 0755 bin/edge.new",
      "mv -f bin/edge.new bin/edge && mv -f edge.env.new edge.env",
      "if [ '${self.input.process_manager}' = systemd ]; then",
      "  SUDO=''; [ \"$(id -u)\" = 0 ] || SUDO='sudo -n'",
      "  $SUDO chown '${self.input.service_user}' edge.env tls/key.pem",
      "  $SUDO systemctl restart '${self.input.unit}.service'",
      "else",
      "  ./stop.sh && ./start.sh",
      "fi",
      "./health.sh",
    ]
  }
}
