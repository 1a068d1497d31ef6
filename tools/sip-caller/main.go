// Command sip-caller plays the SIP callers of the LiveKit rooms bench the way LiveKit's SIP
// bridge joins a room: through server-sdk-go and pion (one peer connection per direction),
// publishing Opus it does not encode itself (packets made once by the bench) and listening
// to the agent's track without decoding it. Many callers share one process, so the cores
// the bench measures the gateway on are not spent on the callers' codecs.
//
// It reads commands from stdin and writes events to stdout, one JSON object per line.
// Times are CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic().
//
//	{"op":"clips","paths":["q0.opus",...]}          packet files: [u16 length][packet]...
//	{"op":"join","id":"r1","url":"ws://...","token":"..."}
//	{"op":"say","id":"r1","clip":0}
//	{"op":"leave","id":"r1"}
//
//	{"ev":"connected","id":"r1","t":1.0}            the room connection is up
//	{"ev":"failed","id":"r1","error":"..."}         the join failed
//	{"ev":"loud","id":"r1","t":1.0}                 the agent's audio began (a stretch)
//	{"ev":"quiet","id":"r1","t":1.0}                ... ended (t: its last voice packet)
//	{"ev":"said","id":"r1","t":1.0}                 the clip has been sent
//	{"ev":"left","id":"r1"}                         the room was left or closed
//
// The agent publishes with DTX: while it is silent its track carries no packets or only
// tiny ones, so a packet of VoicePayloadBytes or more is its voice.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"golang.org/x/sys/unix"
)

const (
	frame             = 20 * time.Millisecond
	VoicePayloadBytes = 20                     // an Opus packet this large carries sound
	stretchGap        = 150 * time.Millisecond // voice after this much none is a new stretch
)

// silence is an Opus packet of a 20 ms frame of digital silence (a TOC byte and a CELT
// silence frame): what a bridge forwards between the caller's words.
var silence = []byte{0xf8, 0xff, 0xfe}

func monotonic() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

type out struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *out) emit(event map[string]any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(event)
}

type caller struct {
	id     string
	room   *lksdk.Room
	out    *out
	clips  *[][][]byte
	mu     sync.Mutex
	queue  [][]byte // packets of the clip being said
	saying bool
	done   chan struct{}
	once   sync.Once
}

func (c *caller) say(clip int) {
	clips := *c.clips
	if clip < 0 || clip >= len(clips) || len(clips[clip]) == 0 {
		c.out.emit(map[string]any{"ev": "said", "id": c.id, "t": monotonic()}) // nothing to say
		return
	}
	c.mu.Lock()
	c.queue = append(c.queue, clips[clip]...)
	c.saying = true
	c.mu.Unlock()
}

// microphone sends a packet every 20 ms: the clip's next one, else silence.
func (c *caller) microphone(track *lksdk.LocalTrack) {
	ticker := time.NewTicker(frame)
	defer ticker.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-ticker.C:
		}
		packet := silence
		said := false
		c.mu.Lock()
		if len(c.queue) > 0 {
			packet, c.queue = c.queue[0], c.queue[1:]
			said = len(c.queue) == 0 && c.saying
			if said {
				c.saying = false
			}
		}
		c.mu.Unlock()
		_ = track.WriteSample(media.Sample{Data: packet, Duration: frame}, nil)
		if said {
			c.out.emit(map[string]any{"ev": "said", "id": c.id, "t": monotonic()})
		}
	}
}

// listen reports the stretches of the agent's voice on `track`.
func (c *caller) listen(track *webrtc.TrackRemote) {
	var last time.Time
	var lastMono float64
	loud := false
	check := time.NewTicker(50 * time.Millisecond)
	defer check.Stop()
	packets := make(chan int, 64)
	go func() {
		defer close(packets)
		for {
			p, _, err := track.ReadRTP()
			if err != nil {
				return
			}
			select {
			case packets <- len(p.Payload):
			case <-c.done:
				return
			}
		}
	}()
	for {
		select {
		case size, ok := <-packets:
			if !ok { // the track ended (the agent left): its voice ended too
				if loud {
					c.out.emit(map[string]any{"ev": "quiet", "id": c.id, "t": lastMono})
				}
				return
			}
			if size < VoicePayloadBytes {
				continue
			}
			now := time.Now()
			if loud && now.Sub(last) > stretchGap { // the check had not ended the stretch yet
				c.out.emit(map[string]any{"ev": "quiet", "id": c.id, "t": lastMono})
				loud = false
			}
			lastMono = monotonic()
			if !loud {
				loud = true
				c.out.emit(map[string]any{"ev": "loud", "id": c.id, "t": lastMono})
			}
			last = now
		case <-check.C:
			if loud && time.Since(last) > stretchGap {
				loud = false
				c.out.emit(map[string]any{"ev": "quiet", "id": c.id, "t": lastMono})
			}
		case <-c.done:
			return
		}
	}
}

func (c *caller) leave() {
	c.once.Do(func() {
		c.mu.Lock()
		close(c.done)
		room := c.room
		c.mu.Unlock()
		if room != nil {
			room.Disconnect()
		}
		c.out.emit(map[string]any{"ev": "left", "id": c.id})
	})
}

func join(c *caller, url, token string) {
	callback := lksdk.NewRoomCallback()
	callback.OnTrackSubscribed = func(track *webrtc.TrackRemote, _ *lksdk.RemoteTrackPublication, _ *lksdk.RemoteParticipant) {
		if track.Kind() == webrtc.RTPCodecTypeAudio {
			go c.listen(track)
		}
	}
	callback.OnDisconnected = func() { c.leave() }
	room, err := lksdk.ConnectToRoomWithToken(url, token, callback, lksdk.WithAutoSubscribe(true))
	if err != nil {
		c.out.emit(map[string]any{"ev": "failed", "id": c.id, "error": err.Error()})
		c.leave()
		return
	}
	c.mu.Lock()
	select {
	case <-c.done: // left while joining: leave the room just joined
		c.mu.Unlock()
		room.Disconnect()
		return
	default:
	}
	c.room = room
	c.mu.Unlock()
	c.out.emit(map[string]any{"ev": "connected", "id": c.id, "t": monotonic()})
	track, err := lksdk.NewLocalSampleTrack(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
	})
	if err == nil {
		_, err = room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
			Name: "phone", Source: livekit.TrackSource_MICROPHONE,
		})
	}
	if err != nil {
		c.out.emit(map[string]any{"ev": "failed", "id": c.id, "error": err.Error()})
		c.leave()
		return
	}
	go c.microphone(track)
}

func readClip(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var packets [][]byte
	for len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n {
			return nil, fmt.Errorf("%s: a packet runs past the end", path)
		}
		packets = append(packets, data[2:2+n])
		data = data[2+n:]
	}
	return packets, nil
}

type command struct {
	Op    string   `json:"op"`
	ID    string   `json:"id"`
	URL   string   `json:"url"`
	Token string   `json:"token"`
	Clip  int      `json:"clip"`
	Paths []string `json:"paths"`
}

func main() {
	o := &out{enc: json.NewEncoder(os.Stdout)}
	var clips [][][]byte
	callers := map[string]*caller{}
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		var cmd command
		if err := json.Unmarshal(lines.Bytes(), &cmd); err != nil {
			fmt.Fprintln(os.Stderr, "sip-caller: bad command:", err)
			continue
		}
		switch cmd.Op {
		case "clips":
			clips = nil
			for _, path := range cmd.Paths {
				packets, err := readClip(path)
				if err != nil {
					fmt.Fprintln(os.Stderr, "sip-caller:", err)
					os.Exit(2)
				}
				clips = append(clips, packets)
			}
		case "join":
			c := &caller{id: cmd.ID, out: o, clips: &clips, done: make(chan struct{})}
			callers[cmd.ID] = c
			go join(c, cmd.URL, cmd.Token)
		case "say":
			if c := callers[cmd.ID]; c != nil {
				c.say(cmd.Clip)
			}
		case "leave":
			if c := callers[cmd.ID]; c != nil {
				go c.leave()
				delete(callers, cmd.ID)
			}
		}
	}
	for _, c := range callers {
		c.leave()
	}
}
