// Package composecheck checks docker-compose.yml statically: no Docker engine
// runs where eventfn is built and tested, so the file's consistency is a test.
package composecheck

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
)

type healthcheck struct {
	Test []string `yaml:"test"`
}

type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Hostname    string            `yaml:"hostname"`
	Ports       []string          `yaml:"ports"`
	Environment map[string]string `yaml:"environment"`
	Healthcheck *healthcheck      `yaml:"healthcheck"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

type composeFile struct {
	Services map[string]service `yaml:"services"`
}

func load(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	return c
}

// listeners parses "NAME://host:port,..." into name -> host:port.
func listeners(t *testing.T, svc, v string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range strings.Split(v, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(l), "://")
		if !ok {
			t.Fatalf("%s: listener %q is not NAME://host:port", svc, l)
		}
		out[name] = addr
	}
	return out
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return p
}

func brokers(c composeFile) []string {
	var names []string
	for name, s := range c.Services {
		if s.Environment["KAFKA_PROCESS_ROLES"] != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

var pinned = regexp.MustCompile(`^[a-z0-9./-]+:v?[0-9][A-Za-z0-9._-]*$`)

func TestImagesArePinned(t *testing.T) {
	c := load(t)
	for name, s := range c.Services {
		if s.Build != nil {
			continue
		}
		if !pinned.MatchString(s.Image) {
			t.Errorf("%s: image %q is not pinned to a version", name, s.Image)
		}
	}
	for _, b := range brokers(c) {
		if !strings.HasPrefix(c.Services[b].Image, "apache/kafka:4.") {
			t.Errorf("%s: want the official apache/kafka 4.x image, got %q", b, c.Services[b].Image)
		}
	}
	if !strings.HasPrefix(c.Services["kafka-ui"].Image, "ghcr.io/kafbat/kafka-ui:") {
		t.Errorf("kafka-ui should be kafbat's maintained image, got %q", c.Services["kafka-ui"].Image)
	}
}

func TestKRaftClusterAgrees(t *testing.T) {
	c := load(t)
	names := brokers(c)
	if len(names) != 3 {
		t.Fatalf("want three brokers, got %v", names)
	}
	voters := ""
	ids := map[string]string{}
	wantVoters := []string{}
	for _, name := range names {
		s := c.Services[name]
		env := s.Environment
		id := env["KAFKA_NODE_ID"]
		if other, dup := ids[id]; dup {
			t.Errorf("%s and %s share node id %s", name, other, id)
		}
		ids[id] = name
		if voters == "" {
			voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
		} else if env["KAFKA_CONTROLLER_QUORUM_VOTERS"] != voters {
			t.Errorf("%s: quorum voters %q differ from %q", name, env["KAFKA_CONTROLLER_QUORUM_VOTERS"], voters)
		}
		ls := listeners(t, name, env["KAFKA_LISTENERS"])
		adv := listeners(t, name, env["KAFKA_ADVERTISED_LISTENERS"])
		ctrl := env["KAFKA_CONTROLLER_LISTENER_NAMES"]
		if _, ok := ls[ctrl]; !ok {
			t.Errorf("%s: no %s listener in %q", name, ctrl, env["KAFKA_LISTENERS"])
			continue
		}
		wantVoters = append(wantVoters, fmt.Sprintf("%s@%s:%s", id, name, port(t, ls[ctrl])))
		if _, ok := adv[ctrl]; ok {
			t.Errorf("%s: the controller listener must not be advertised", name)
		}
		protocols := env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
		for l, addr := range adv {
			if _, ok := ls[l]; !ok {
				t.Errorf("%s: advertised listener %s is not a listener", name, l)
				continue
			}
			if port(t, addr) != port(t, ls[l]) {
				t.Errorf("%s: %s advertised on port %s but listens on %s", name, l, port(t, addr), port(t, ls[l]))
			}
			if !strings.Contains(protocols, l+":") {
				t.Errorf("%s: listener %s has no security protocol", name, l)
			}
		}
		inter := env["KAFKA_INTER_BROKER_LISTENER_NAME"]
		if host, _, _ := net.SplitHostPort(adv[inter]); host != name {
			t.Errorf("%s: inter-broker listener advertises %q, want the service name", name, adv[inter])
		}
		// The host listener is published on the same port it advertises.
		hostAddr := adv["PLAINTEXT_HOST"]
		if host, p, _ := net.SplitHostPort(hostAddr); host != "localhost" || !contains(s.Ports, p+":"+p) {
			t.Errorf("%s: host listener %q is not published as %s:%s (ports %v)", name, hostAddr, p, p, s.Ports)
		}
		for key, want := range map[string]string{
			"KAFKA_DEFAULT_REPLICATION_FACTOR":               "3",
			"KAFKA_MIN_INSYNC_REPLICAS":                      "2",
			"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "3",
			"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
			"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "2",
		} {
			if env[key] != want {
				t.Errorf("%s: %s = %q, want %s", name, key, env[key], want)
			}
		}
		if s.Healthcheck == nil {
			t.Errorf("%s: no healthcheck", name)
		}
	}
	sort.Strings(wantVoters)
	got := strings.Split(voters, ",")
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(wantVoters, ",") {
		t.Errorf("quorum voters %q, want %q (id@service:controller port of each broker)", voters, strings.Join(wantVoters, ","))
	}
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func TestHostPortsAreUnique(t *testing.T) {
	c := load(t)
	seen := map[string]string{}
	for name, s := range c.Services {
		for _, p := range s.Ports {
			host := strings.SplitN(p, ":", 2)[0]
			if other, dup := seen[host]; dup {
				t.Errorf("host port %s is published by %s and %s", host, name, other)
			}
			seen[host] = name
		}
	}
	for _, want := range []string{"8080", "8081", "9092", "9093", "9094", "5432"} {
		if _, ok := seen[want]; !ok {
			t.Errorf("host port %s (named in the README) is not published", want)
		}
	}
}

// TestAppConfigurationNamesServicesThatExist loads the compose profile the app
// runs with and checks every address in it against the services.
func TestAppConfigurationNamesServicesThatExist(t *testing.T) {
	c := load(t)
	app, ok := c.Services["eventfn"]
	if !ok {
		t.Fatal("no eventfn service")
	}
	if app.Build == nil {
		t.Error("eventfn should be built from the Dockerfile")
	}
	profile := app.Environment["EVENTFN_PROFILE"]
	cfg, err := configs.Load(configs.Options{Profile: profile})
	if err != nil {
		t.Fatalf("profile %q: %v", profile, err)
	}
	if cfg.Kafka.Embedded {
		t.Error("the compose profile must use the compose brokers, not the embedded one")
	}
	for _, b := range cfg.Kafka.Brokers {
		host, _, _ := net.SplitHostPort(b)
		s, ok := c.Services[host]
		if !ok {
			t.Errorf("kafka.brokers names %s, which is not a service", host)
			continue
		}
		inter := s.Environment["KAFKA_INTER_BROKER_LISTENER_NAME"]
		if adv := listeners(t, host, s.Environment["KAFKA_ADVERTISED_LISTENERS"])[inter]; adv != b {
			t.Errorf("kafka.brokers has %s, but %s advertises %s inside the network", b, host, adv)
		}
		if app.DependsOn[host].Condition != "service_healthy" {
			t.Errorf("eventfn does not wait for %s to be healthy", host)
		}
	}
	if cfg.Kafka.ReplicationFactor != 3 {
		t.Errorf("compose profile creates topics with replication %d, want 3", cfg.Kafka.ReplicationFactor)
	}
	u, err := url.Parse(cfg.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	pg, ok := c.Services[u.Hostname()]
	if !ok {
		t.Fatalf("database.url names %s, which is not a service", u.Hostname())
	}
	pass, _ := u.User.Password()
	if u.User.Username() != pg.Environment["POSTGRES_USER"] || pass != pg.Environment["POSTGRES_PASSWORD"] ||
		strings.TrimPrefix(u.Path, "/") != pg.Environment["POSTGRES_DB"] {
		t.Errorf("database.url %s does not match the postgres service's user, password and database", cfg.Database.URL)
	}
	if app.DependsOn[u.Hostname()].Condition != "service_healthy" {
		t.Errorf("eventfn does not wait for %s to be healthy", u.Hostname())
	}
	if _, p, _ := net.SplitHostPort(cfg.HTTP.Addr); !contains(app.Ports, p+":"+p) {
		t.Errorf("http.addr %s is not published (ports %v)", cfg.HTTP.Addr, app.Ports)
	}
	ui := c.Services["kafka-ui"]
	for _, b := range strings.Split(ui.Environment["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"], ",") {
		host, _, _ := net.SplitHostPort(b)
		if _, ok := c.Services[host]; !ok {
			t.Errorf("kafka-ui bootstraps from %s, which is not a service", b)
		}
	}
}

// TestDependenciesHaveHealthchecks: a service_healthy condition on a service
// without a healthcheck never converges.
func TestDependenciesHaveHealthchecks(t *testing.T) {
	c := load(t)
	for name, s := range c.Services {
		for dep, cond := range s.DependsOn {
			d, ok := c.Services[dep]
			if !ok {
				t.Errorf("%s depends on %s, which does not exist", name, dep)
				continue
			}
			if cond.Condition == "service_healthy" && d.Healthcheck == nil {
				t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
	}
}

func TestDockerfileIsMultiStage(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms []string
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.EqualFold(f[0], "FROM") {
			froms = append(froms, f[1])
		}
	}
	if len(froms) < 2 {
		t.Fatalf("want a build stage and a small final stage, got FROM %v", froms)
	}
	if final := froms[len(froms)-1]; strings.Contains(final, "golang") {
		t.Errorf("final image %s carries the Go toolchain", final)
	}
	if !strings.Contains(string(raw), "CGO_ENABLED=0") {
		t.Error("the binary should be static (CGO_ENABLED=0) for the distroless image")
	}
}

// securedFile is the secured variant, laid over docker-compose.yml.
const securedFile = "docker-compose.secured.yml"

// loadSecured merges the secured variant over the base file as docker
// compose does for the keys both use: environment and depends_on by key,
// volumes and secrets appended.
func loadSecured(t *testing.T) (composeFile, map[string][]string) {
	t.Helper()
	c := load(t)
	raw, err := os.ReadFile(filepath.Join("..", "..", securedFile))
	if err != nil {
		t.Fatal(err)
	}
	var over struct {
		Services map[string]struct {
			service `yaml:",inline"`
			Volumes []string `yaml:"volumes"`
			Secrets []string `yaml:"secrets"`
			Command []string `yaml:"command"`
		} `yaml:"services"`
		Secrets map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
	}
	if err := yaml.Unmarshal(raw, &over); err != nil {
		t.Fatalf("%s does not parse: %v", securedFile, err)
	}
	secretFiles := map[string][]string{}
	for name, o := range over.Services {
		s, ok := c.Services[name]
		if !ok {
			s = o.service
		} else {
			if s.Environment == nil {
				s.Environment = map[string]string{}
			}
			for k, v := range o.Environment {
				s.Environment[k] = v
			}
			if s.DependsOn == nil {
				s.DependsOn = o.DependsOn
			}
			for k, v := range o.DependsOn {
				s.DependsOn[k] = v
			}
		}
		c.Services[name] = s
		for _, sec := range o.Secrets {
			f, ok := over.Secrets[sec]
			if !ok {
				t.Errorf("%s uses secret %s, which is not declared", name, sec)
				continue
			}
			secretFiles[name] = append(secretFiles[name], filepath.Join("..", "..", f.File))
		}
		if strings.HasPrefix(name, "kafka-") && name != "kafka-users" && !contains(o.Volumes, "certs:/certs:ro") {
			t.Errorf("%s does not mount the certificates", name)
		}
		if name == "kafka-users" && (len(o.Command) == 0 || !strings.Contains(o.Command[0], "--entity-name eventfn")) {
			t.Errorf("kafka-users does not create the user eventfn connects as: %v", o.Command)
		}
	}
	return c, secretFiles
}

// TestSecuredVariantConnectsOnlyThroughSASLSSL checks the secured variant:
// every broker offers SASL_SSL with SCRAM-SHA-512 on an advertised address
// the app names, the app's settings load as eventfn would load them (the
// certificate and password paths swapped for local files), and the user it
// connects as is the one kafka-users creates.
func TestSecuredVariantConnectsOnlyThroughSASLSSL(t *testing.T) {
	c, secretFiles := loadSecured(t)
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s has no image", name)
		}
		if s.Image != "" && (!strings.Contains(s.Image, ":") || strings.HasSuffix(s.Image, ":latest")) {
			t.Errorf("service %s image %q is not pinned", name, s.Image)
		}
	}
	app := c.Services["eventfn"]
	env := []string{}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	writeTestCA(t, ca)
	for k, v := range app.Environment {
		switch v {
		case "/certs/ca.pem":
			v = ca
		case "/run/secrets/kafka_password":
			if len(secretFiles["eventfn"]) != 1 {
				t.Fatalf("eventfn reads %s but mounts secrets %v", v, secretFiles["eventfn"])
			}
			v = secretFiles["eventfn"][0]
		}
		env = append(env, k+"="+v)
	}
	cfg, err := configs.Load(configs.Options{Environ: env})
	if err != nil {
		t.Fatalf("the secured app settings do not load: %v", err)
	}
	if !cfg.Kafka.TLS.Enabled || cfg.Kafka.SASL.Mechanism != "SCRAM-SHA-512" || cfg.Kafka.SASL.Password == "" {
		t.Errorf("the app does not use SASL_SSL with SCRAM-SHA-512: %+v %+v", cfg.Kafka.SASL, cfg.Kafka.TLS)
	}
	if len(cfg.Kafka.Brokers) != 3 {
		t.Errorf("the app bootstraps from %v, want the three brokers", cfg.Kafka.Brokers)
	}
	for _, b := range cfg.Kafka.Brokers {
		host, _, _ := net.SplitHostPort(b)
		s, ok := c.Services[host]
		if !ok {
			t.Errorf("kafka.brokers names %s, which is not a service", host)
			continue
		}
		protocols := map[string]string{}
		for _, kv := range strings.Split(s.Environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"], ",") {
			name, proto, _ := strings.Cut(kv, ":")
			protocols[name] = proto
		}
		adv := listeners(t, host, s.Environment["KAFKA_ADVERTISED_LISTENERS"])
		var secured string
		for name, proto := range protocols {
			if proto == "SASL_SSL" {
				secured = name
			}
		}
		if secured == "" || adv[secured] != b {
			t.Errorf("%s: the app connects to %s, but the SASL_SSL listener %q advertises %q", host, b, secured, adv[secured])
		}
		if strings.Contains(strings.ToUpper(s.Environment["KAFKA_ADVERTISED_LISTENERS"]), "SSL") {
			t.Errorf("%s: a listener name with SSL in it makes the apache/kafka image demand JKS files", host)
		}
		if !strings.Contains(s.Environment["KAFKA_SASL_ENABLED_MECHANISMS"], cfg.Kafka.SASL.Mechanism) {
			t.Errorf("%s does not enable %s", host, cfg.Kafka.SASL.Mechanism)
		}
		if s.Environment["KAFKA_LISTENER_NAME_"+secured+"_SCRAM___SHA___512_SASL_JAAS_CONFIG"] == "" {
			t.Errorf("%s has no SCRAM login module on listener %s", host, secured)
		}
		if app.DependsOn[host].Condition != "service_healthy" {
			t.Errorf("eventfn does not wait for %s", host)
		}
	}
	if app.DependsOn["kafka-users"].Condition != "service_completed_successfully" {
		t.Error("eventfn does not wait for its SCRAM user")
	}
	if cfg.Kafka.SASL.Username != "eventfn" {
		t.Errorf("the app connects as %q, kafka-users creates eventfn", cfg.Kafka.SASL.Username)
	}
}

// writeTestCA writes a CA certificate of the test, standing in for the one
// the certs service makes.
func writeTestCA(t *testing.T, path string) {
	t.Helper()
	f := testenv.NewTLSFiles(t)
	raw, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}
