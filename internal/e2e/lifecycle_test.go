package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// machineEvents is a machine as the machines API shows it, with its events.
type machineEvents struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Config struct {
		Metadata map[string]string `json:"metadata"`
	} `json:"config"`
	Events []struct {
		Type    string `json:"type"`
		Status  string `json:"status"`
		Request *struct {
			ExitEvent *struct {
				ExitCode int    `json:"exit_code"`
				Signal   string `json:"signal"`
			} `json:"exit_event"`
		} `json:"request"`
	} `json:"events"`
}

// history is a machine's events, oldest first, as type:status.
func (m machineEvents) history() []string {
	var out []string
	for i := len(m.Events) - 1; i >= 0; i-- {
		out = append(out, m.Events[i].Type+":"+m.Events[i].Status)
	}
	return out
}

// runcPID is the host pid of a runc machine's main process.
func (s *server) runcPID(id string) int {
	s.t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(s.dataDir, "machines", "runc-root"), "state", id).Output()
	if err != nil {
		s.t.Fatalf("runc state %s: %v", id, err)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		s.t.Fatal(err)
	}
	return st.Pid
}

// TestAppAndAPIMachinesShareOneLifecycle: an app's machine is a machine
// like those of the machines API. Both are listed, shown and exec'd through
// the machines API, and after a kill -9 of their main process (the API
// machine with restart.policy=always) both come back within the same bound
// and record the same history.
func TestAppAndAPIMachinesShareOneLifecycle(t *testing.T) {
	s := startRuncServer(t)
	dir := copyApp(t, "go")
	setVersion(t, dir, "life", "one", "")
	s.mustPier("launch", dir, "--yes")
	s.mustGet("life", "/", "version=one")
	appID := s.status("life").Machines[0].ID

	var api apiMachine
	if code := s.apiCall("POST", "/v1/apps/life/machines", map[string]any{"config": map[string]any{
		"image": busyboxImage(t), "init": map[string]any{"cmd": []string{"/bin/sleep", "3600"}}, "restart": map[string]any{"policy": "always"}}}, &api); code != 200 {
		t.Fatalf("create: %d %s", code, api.Error)
	}
	if code := s.apiCall("GET", "/v1/apps/life/machines/"+api.ID+"/wait?state=started&timeout=30", nil, nil); code != 200 {
		t.Fatalf("wait for the API machine: %d", code)
	}

	// One list, one shape.
	var list []machineEvents
	s.apiCall("GET", "/v1/apps/life/machines", nil, &list)
	var ids []string
	for _, m := range list {
		ids = append(ids, m.ID)
		if m.State != "started" {
			t.Errorf("machine %s is %s", m.ID, m.State)
		}
	}
	if !slices.Contains(ids, appID) || !slices.Contains(ids, api.ID) || len(ids) != 2 {
		t.Fatalf("machines API lists %v, want the app's %s and the API's %s", ids, appID, api.ID)
	}
	if out := s.mustPier("machines", "list", "-a", "life"); !strings.Contains(out, appID) || !strings.Contains(out, "release:life:v1") {
		t.Errorf("pier machines list does not show the app's machine:\n%s", out)
	}
	var res execResult
	if code := s.apiCall("POST", "/v1/apps/life/machines/"+appID+"/exec", map[string]any{"cmd": "echo $FLY_APP_NAME $FLY_MACHINE_ID; id -u"}, &res); code != 200 || res.ExitCode != 0 {
		t.Fatalf("exec on the app's machine: %d %+v", code, res)
	}
	if want := fmt.Sprintf("life %s\n65534\n", appID); res.Stdout != want {
		t.Errorf("exec on the app's machine printed %q, want %q", res.Stdout, want)
	}
	// The CLI's way in, as `fly ssh console -C` is.
	if out := s.mustPier("machines", "exec", appID, "-a", "life", "--", "sh", "-c", "echo $PIER_APP_NAME v$PIER_RELEASE_VERSION"); out != "life v1\n" {
		t.Errorf("pier machines exec on the app's machine printed %q", out)
	}

	// kill -9 of each main process: both come back, same id, new process.
	appPID, apiPID := s.status("life").Machines[0].PID, s.runcPID(api.ID)
	killed := time.Now()
	for _, pid := range []int{appPID, apiPID} {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	back := map[string]time.Duration{}
	eventually(t, 20*time.Second, "both machines back after kill -9", func() error {
		for _, id := range []string{appID, api.ID} {
			if _, ok := back[id]; ok {
				continue
			}
			var m machineEvents
			s.apiCall("GET", "/v1/apps/life/machines/"+id, nil, &m)
			if m.State != "started" || !slices.Contains(m.history(), "exit:starting") {
				return fmt.Errorf("machine %s: %s, %v", id, m.State, m.history())
			}
			if id == appID {
				if st := s.status("life"); !st.Machines[0].Healthy || st.Machines[0].PID == appPID {
					return fmt.Errorf("app machine: %+v", st.Machines[0])
				}
			} else if pid := s.runcPID(id); pid == apiPID || pid == 0 {
				return fmt.Errorf("API machine pid %d", pid)
			}
			back[id] = time.Since(killed)
		}
		return nil
	})
	t.Logf("back after kill -9: app machine %s, API machine %s", back[appID].Round(time.Millisecond), back[api.ID].Round(time.Millisecond))
	s.mustGet("life", "/", "version=one")

	var appM, apiM machineEvents
	s.apiCall("GET", "/v1/apps/life/machines/"+appID, nil, &appM)
	s.apiCall("GET", "/v1/apps/life/machines/"+api.ID, nil, &apiM)
	if !slices.Equal(appM.history(), apiM.history()) {
		t.Errorf("histories differ:\napp machine %v\nAPI machine %v", appM.history(), apiM.history())
	}
	if want := []string{"launch:created", "start:starting", "exit:starting"}; !slices.Equal(appM.history(), want) {
		t.Errorf("app machine history = %v, want %v", appM.history(), want)
	}
	for _, m := range []machineEvents{appM, apiM} {
		if ev := m.Events[0]; ev.Request == nil || ev.Request.ExitEvent == nil || ev.Request.ExitEvent.Signal == "" {
			t.Errorf("machine %s: latest event %+v, want the kill's exit", m.ID, ev)
		}
	}
	if appM.Config.Metadata["fly_process_group"] != "app" || appM.Config.Metadata["fly_release_version"] != "1" {
		t.Errorf("app machine metadata = %v", appM.Config.Metadata)
	}

	// Deploys own an app machine's config.
	if code := s.apiCall("POST", "/v1/apps/life/machines/"+appID, map[string]any{"config": map[string]any{"image": busyboxImage(t)}}, &api); code != 412 || !strings.Contains(api.Error, "deploy") {
		t.Errorf("update of an app machine: %d %q, want 412 naming deploy", code, api.Error)
	}
}
