# Per instance, three terraform_data resources. Provisioners run only when a
# resource is created, so each one is replaced when what it installs changes:
#   install[name]  directories (and the service user); its destroy-time
#                  provisioner stops the service and removes them. Replaced
#                  only when the host, the paths or the process manager change.
#   binary[name]   the program, uploaded when its local file changes.
#   config[name]   scripts, unit, env file and config files in one upload,
#                  then a restart and a health check. Replaced when any of
#                  them or the binary changes: `terraform apply
#                  -parallelism=1` makes that a rolling restart.
# Secrets reach the hosts only as provisioner content, which terraform never
# stores: the state holds a SHA-256 of each bundle, not the values.

locals {
  # systemd needs root: sudo when the SSH user is not root. "none" installs
  # as the SSH user, into directories it can write.
  sudo = var.process_manager == "systemd" ? "SUDO=''; if [ \"$(id -u)\" != 0 ]; then SUDO='sudo -n'; fi" : "SUDO=''"

  inst = { for n, i in var.instances : n => merge(i, {
    label    = "${var.kind} ${n}"
    unit     = "keymesh-${var.kind}-${n}"
    bin      = "${i.dir}/bin/${var.kind}"
    env_file = "${i.dir}/${var.kind}.env"
    pid_file = "${i.dir}/${var.kind}.pid"
    log_file = "${i.dir}/${var.kind}.log"
    stage    = "${i.dir}/.deploy"
    health = {
      name    = "${var.kind} ${n}"
      unit    = "keymesh-${var.kind}-${n}"
      url     = i.health_url
      host    = trim(regex("^https?://([^/:]+|\\[[0-9a-fA-F:]+\\]):", i.health_url)[0], "[]")
      port    = regex("^https?://[^/]*:([0-9]+)/", i.health_url)[0]
      path    = regex("^https?://[^/]+(/.*)$", i.health_url)[0]
      timeout = var.health_timeout_seconds
    }
  }) }

  # The scripts. cloud-init VMs run systemd, so they get health_systemd.
  scripts = { for n, i in local.inst : n => {
    health = templatefile("${path.module}/templates/health.sh.tftpl", merge(i.health, {
      log_file = var.process_manager == "none" ? i.log_file : ""
      pid_file = var.process_manager == "none" ? i.pid_file : ""
    }))
    health_systemd = templatefile("${path.module}/templates/health.sh.tftpl", merge(i.health, {
      log_file = ""
      pid_file = ""
    }))
    run = templatefile("${path.module}/templates/run.sh.tftpl", {
      name     = i.label
      workdir  = i.dir
      env_file = i.env_file
      bin      = i.bin
      args     = i.args
    })
    start = templatefile("${path.module}/templates/start.sh.tftpl", {
      name          = i.label
      dir           = i.dir
      run           = "${i.dir}/run.sh"
      pid_file      = i.pid_file
      log_file      = i.log_file
      max_log_bytes = var.max_log_bytes
    })
    stop = templatefile("${path.module}/templates/stop.sh.tftpl", {
      name         = i.label
      dir          = i.dir
      run          = "${i.dir}/run.sh"
      pid_file     = i.pid_file
      stop_timeout = var.stop_timeout_seconds
    })
    unit = templatefile("${path.module}/templates/unit.service.tftpl", {
      name         = i.label
      user         = var.service_user
      env_file     = i.env_file
      workdir      = i.dir
      bin          = i.bin
      args         = i.args
      data_dir     = i.data_dir
      stop_timeout = var.stop_timeout_seconds
      low_ports    = var.low_ports
    })
  } }

  # What the service reads: its env file (the SSH user's) and its config
  # files (the service user's under systemd).
  config_files = { for n, i in local.inst : n => concat(
    [{ path = i.env_file, mode = "0600", service = false, content = var.env[n] }],
    [for p, f in try(var.files[n], {}) : { path = p, mode = f.mode, service = true, content = f.content }],
  ) }

  script_files = { for n, i in local.inst : n => var.process_manager == "systemd" ? [
    { path = "${i.dir}/health.sh", mode = "0755", service = false, content = local.scripts[n].health },
    { path = "/etc/systemd/system/${i.unit}.service", mode = "0644", service = false, content = local.scripts[n].unit },
    ] : [
    { path = "${i.dir}/health.sh", mode = "0755", service = false, content = local.scripts[n].health },
    { path = "${i.dir}/run.sh", mode = "0755", service = false, content = local.scripts[n].run },
    { path = "${i.dir}/start.sh", mode = "0755", service = false, content = local.scripts[n].start },
    { path = "${i.dir}/stop.sh", mode = "0755", service = false, content = local.scripts[n].stop },
  ] }

  bundle = { for n, i in local.inst : n => templatefile("${path.module}/templates/bundle.sh.tftpl", {
    name = i.label
    files = [for f in concat(local.script_files[n], local.config_files[n]) : {
      path  = f.path, mode = f.mode, b64 = base64encode(f.content),
      owner = f.service && var.process_manager == "systemd" ? var.service_user : "",
    }]
  }) }
}

resource "terraform_data" "install" {
  for_each = local.inst

  # Everything the destroy-time provisioner needs: it may only use self.
  input = {
    label           = each.value.label
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
    var.kind, var.process_manager, var.service_user,
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
      local.sudo,
      "$SUDO mkdir -p '${self.input.dir}/bin' '${self.input.dir}/.deploy' '${self.input.data_dir}'",
      "$SUDO chown \"$(id -un)\" '${self.input.dir}' '${self.input.dir}/bin' '${self.input.dir}/.deploy'",
      "chmod 0755 '${self.input.dir}' '${self.input.dir}/bin' && chmod 0700 '${self.input.dir}/.deploy'",
      "$SUDO chmod 0700 '${self.input.data_dir}'",
      "if [ '${self.input.process_manager}' = systemd ]; then",
      "  id -u '${self.input.service_user}' >/dev/null 2>&1 || $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin '${self.input.service_user}'",
      "  $SUDO chown '${self.input.service_user}' '${self.input.data_dir}'",
      "fi",
      "echo '${self.input.label}: directories ready on ${self.input.host}'",
    ]
  }

  provisioner "remote-exec" {
    when = destroy
    inline = [
      "set -eu",
      "SUDO=''; if [ '${self.input.process_manager}' = systemd ] && [ \"$(id -u)\" != 0 ]; then SUDO='sudo -n'; fi",
      "if [ '${self.input.process_manager}' = systemd ]; then",
      "  $SUDO systemctl disable --now '${self.input.unit}.service' 2>/dev/null || true",
      "  $SUDO rm -f '/etc/systemd/system/${self.input.unit}.service'",
      "  $SUDO systemctl daemon-reload",
      "elif [ -x '${self.input.dir}/stop.sh' ]; then",
      "  '${self.input.dir}/stop.sh'",
      "fi",
      "$SUDO rm -rf '${self.input.dir}'",
      "if [ '${self.input.purge}' = true ]; then $SUDO rm -rf '${self.input.data_dir}'; fi",
      "echo '${self.input.label}: removed from ${self.input.host}'",
    ]
  }
}

resource "terraform_data" "binary" {
  for_each = local.inst

  input            = terraform_data.install[each.key].input
  triggers_replace = [terraform_data.install[each.key].id, filesha256(each.value.binary)]

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
    destination = "${each.value.stage}/${var.kind}.new"
  }
  # Replacing the file leaves a running process on the old one; config
  # (replaced with this resource) restarts it.
  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "chmod 0755 '${each.value.stage}/${var.kind}.new'",
      "mv -f '${each.value.stage}/${var.kind}.new' '${each.value.bin}'",
    ]
  }
}

resource "terraform_data" "config" {
  for_each = local.inst

  input = terraform_data.install[each.key].input
  triggers_replace = [
    terraform_data.binary[each.key].id,
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
    content     = local.bundle[each.key]
    destination = "${each.value.stage}/bundle.sh"
  }
  provisioner "remote-exec" {
    inline = [
      "set -eu",
      local.sudo,
      "cd '${each.value.dir}'",
      "$SUDO sh .deploy/bundle.sh",
      "if [ '${var.process_manager}' = systemd ]; then",
      "  $SUDO systemctl daemon-reload",
      "  $SUDO systemctl enable --quiet '${each.value.unit}.service'",
      "  $SUDO systemctl restart '${each.value.unit}.service'",
      "else",
      "  ./stop.sh",
      "  ./start.sh",
      "fi",
      "./health.sh",
    ]
  }
}
