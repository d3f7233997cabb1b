locals {
  inst = { for n, i in var.instances : n => merge(i, {
    unit       = "keymesh-${var.kind}-${n}"
    bin        = "${i.dir}/bin/${var.kind}"
    env_file   = "${i.dir}/${var.kind}.env"
    pid_file   = "${i.dir}/${var.kind}.pid"
    log_file   = "${i.dir}/${var.kind}.log"
    probe_host = regex("^https?://([^/:]+|\\[[^]]+\\])", i.health_url)[0]
    probe_port = regex("^https?://[^/]+:([0-9]+)", i.health_url)[0]
  }) }

  start_sh = { for n, i in local.inst : n => templatefile("${path.module}/templates/start.sh.tftpl", {
    name = "${var.kind} ${n}", dir = i.dir, bin = i.bin, args = i.args, env_file = i.env_file,
    pid_file = i.pid_file, log_file = i.log_file, workdir = i.dir
  }) }
  stop_sh = { for n, i in local.inst : n => templatefile("${path.module}/templates/stop.sh.tftpl", {
    name = "${var.kind} ${n}", dir = i.dir, bin = i.bin, pid_file = i.pid_file,
    stop_timeout = var.stop_timeout_seconds
  }) }
  health_sh = { for n, i in local.inst : n => templatefile("${path.module}/templates/health.sh.tftpl", {
    name = "${var.kind} ${n}", url = i.health_url, probe_host = trim(i.probe_host, "[]"),
    probe_port = i.probe_port, timeout = var.health_timeout_seconds,
    log_file = var.process_manager == "none" ? i.log_file : "", unit = i.unit
  }) }
  unit_file = { for n, i in local.inst : n => templatefile("${path.module}/templates/unit.service.tftpl", {
    description = "${var.kind} ${n}", user = var.service_user, env_file = i.env_file,
    workdir = i.dir, bin = i.bin, args = i.args, data_dir = i.data_dir,
    stop_timeout = var.stop_timeout_seconds
  }) }

  bundle = { for n, i in local.inst : n => templatefile("${path.module}/templates/bundle.sh.tftpl", {
    files = [for p, f in lookup(var.files, n, {}) : { path = p, mode = f.mode, b64 = base64encode(f.content) }]
  }) }
}

resource "terraform_data" "install" {
  for_each = local.inst

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
    kind            = var.kind
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
      "$SUDO mkdir -p '${self.input.dir}/bin' '${self.input.data_dir}'",
      "$SUDO chown -R \"$(id -un)\" '${self.input.dir}'",
      "chmod 0755 '${self.input.dir}'",
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
      "echo '${self.input.kind} ${self.input.name} removed'",
    ]
  }
}

resource "terraform_data" "config" {
  for_each = local.inst

  input = terraform_data.install[each.key].input
  triggers_replace = [
    terraform_data.install[each.key].id,
    filesha256(each.value.binary),
    nonsensitive(sha256(local.bundle[each.key])),
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
    source      = each.value.binary
    destination = "${each.value.bin}.new"
  }
  provisioner "file" {
    content     = local.bundle[each.key]
    destination = "${each.value.dir}/bundle.sh"
  }
  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "cd '${self.input.dir}'",
      "sh ./bundle.sh",
      "chmod 0755 'bin/${self.input.kind}.new' && mv -f 'bin/${self.input.kind}.new' 'bin/${self.input.kind}'",
      "if [ '${self.input.process_manager}' = systemd ]; then",
      "  SUDO=''; [ \"$(id -u)\" = 0 ] || SUDO='sudo -n'",
      "  $SUDO chown -R '${self.input.service_user}' '${self.input.data_dir}' '${self.input.dir}/${self.input.kind}.env'",
      "  $SUDO systemctl restart '${self.input.unit}.service'",
      "else",
      "  ./stop.sh && ./start.sh",
      "fi",
      "./health.sh",
    ]
  }
}
