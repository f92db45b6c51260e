package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/eventfn/eventfn/configs"
)

// commitTimeNote says why no commit time is shown: Kafka's OffsetFetch
// answers the offset and its metadata only, and eventfn commits no metadata.
const commitTimeNote = "Kafka does not report when an offset was committed; compare two runs of `eventfn groups` to see progress"

// GroupState is one handler's consumer group as `eventfn groups` shows it.
type GroupState struct {
	Handler string `json:"handler"`
	Group   string `json:"group"`
	Topic   string `json:"topic"`
	// State is Kafka's: Stable, Empty (no member), Dead (never joined or
	// expired), PreparingRebalance, CompletingRebalance.
	State string `json:"state"`
	// StartPosition is where the group starts on a partition it has not
	// committed: earliest or latest (run.start_position).
	StartPosition string        `json:"start_position"`
	Members       []GroupMember `json:"members"`
	// Lag sums the partitions' lag.
	Lag int64 `json:"lag"`
	// Deleted sums the partitions' records deleted past the group's commit.
	Deleted    int64          `json:"deleted"`
	Partitions []PartitionLag `json:"partitions"`
	// Note says why no commit time is shown.
	Note string `json:"note"`
}

// GroupMember is one consumer of a group: one eventfn process.
type GroupMember struct {
	MemberID   string  `json:"member_id"`
	ClientID   string  `json:"client_id"`
	Host       string  `json:"host"`
	Partitions []int32 `json:"partitions"`
}

// PartitionLag is how far a group is behind on one partition.
type PartitionLag struct {
	Partition int32 `json:"partition"`
	// Committed is the next offset the group reads; nil when it has not
	// committed one on this partition.
	Committed *int64 `json:"committed"`
	Start     int64  `json:"start"`
	End       int64  `json:"end"`
	// Lag is End − Committed, the records the group has to read: End −
	// Start from a commit below the log start or past the end (read again
	// from the start), and with no commit End − Start from earliest, 0 from
	// latest.
	Lag int64 `json:"lag"`
	// Deleted is Start − Committed when Kafka deleted records past the
	// group's commit (retention): lost to the handler, which will log and
	// count them when it resumes, at Start.
	Deleted int64 `json:"deleted,omitempty"`
	// CommitMetadata is the metadata committed with the offset, if any.
	CommitMetadata string `json:"commit_metadata,omitempty"`
	// Member is the member id of the process that owns the partition.
	Member string `json:"member,omitempty"`
}

func newGroupsCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	f := &stateFlags{}
	cmd := &cobra.Command{
		Use:   "groups",
		Short: "Each handler's consumer group: members, and per partition the committed offset and lag",
		Long: `Show the consumer group of every handler on the Kafka of kafka.brokers: its
state, its members (one per eventfn process running the handler: client id and
host), and per partition the committed offset, the end offset and the lag
between them. ` + commitTimeNote + ".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(environ)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			groups, err := Groups(ctx, cfg)
			if err != nil {
				return err
			}
			if f.asJSON {
				return writeJSON(stdout, groups)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HANDLER\tGROUP\tSTATE\tMEMBERS\tLAG\tPARTITION:COMMITTED/END")
			for _, gs := range groups {
				var members []string
				for _, m := range gs.Members {
					members = append(members, m.ClientID+"@"+m.Host)
				}
				var parts []string
				for _, p := range gs.Partitions {
					c := "-"
					if p.Committed != nil {
						c = fmt.Sprint(*p.Committed)
					}
					part := fmt.Sprintf("%d:%s/%d", p.Partition, c, p.End)
					if p.Deleted > 0 {
						part += fmt.Sprintf(" (%d deleted unread)", p.Deleted)
					}
					parts = append(parts, part)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d %s\t%d\t%s\n", gs.Handler, gs.Group, gs.State, len(gs.Members),
					strings.Join(members, ","), gs.Lag, strings.Join(parts, " "))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "\n- is no commit yet. %s.\n", commitTimeNote)
			return err
		},
	}
	f.register(cmd)
	return cmd
}

// Groups reads the state of every handler's consumer group.
func Groups(ctx context.Context, cfg configs.Config) ([]GroupState, error) {
	infos, err := describeHandlers(cfg)
	if err != nil {
		return nil, err
	}
	adm, err := kafkaAdmin(cfg)
	if err != nil {
		return nil, err
	}
	defer adm.Close()
	var topics, groups []string
	for _, i := range infos {
		if !slices.Contains(topics, i.Topic) {
			topics = append(topics, i.Topic)
		}
		groups = append(groups, i.Group)
	}
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err != nil {
		return nil, kafkaErr(cfg, "list start offsets", err)
	}
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return nil, kafkaErr(cfg, "list end offsets", err)
	}
	described, err := adm.DescribeGroups(ctx, groups...)
	if err != nil {
		return nil, kafkaErr(cfg, "describe consumer groups", err)
	}
	out := make([]GroupState, 0, len(infos))
	for _, info := range infos {
		gs := GroupState{Handler: info.Name, Group: info.Group, Topic: info.Topic, State: "Dead",
			StartPosition: cfg.StartPosition(info.Name), Members: []GroupMember{}, Partitions: []PartitionLag{}, Note: commitTimeNote}
		owner := map[int32]string{}
		if d, ok := described[info.Group]; ok {
			if d.Err != nil && !errors.Is(d.Err, kerr.GroupIDNotFound) {
				return nil, fmt.Errorf("describe group %s: %w", info.Group, d.Err)
			}
			if d.State != "" {
				gs.State = d.State
			}
			for _, m := range d.Members {
				gm := GroupMember{MemberID: m.MemberID, ClientID: m.ClientID, Host: m.ClientHost, Partitions: []int32{}}
				if a, ok := m.Assigned.AsConsumer(); ok {
					for _, t := range a.Topics {
						if t.Topic == info.Topic {
							gm.Partitions = append(gm.Partitions, t.Partitions...)
						}
					}
				}
				slices.Sort(gm.Partitions)
				for _, p := range gm.Partitions {
					owner[p] = m.MemberID
				}
				gs.Members = append(gs.Members, gm)
			}
		}
		committed, err := adm.FetchOffsets(ctx, info.Group)
		if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
			return nil, kafkaErr(cfg, "fetch the offsets of group "+info.Group, err)
		}
		var parts []kadm.ListedOffset
		for _, e := range ends[info.Topic] {
			// -1 is kadm's marker of a topic that does not exist: no
			// eventfn has run yet, and there is no lag to show.
			if e.Partition >= 0 {
				parts = append(parts, e)
			}
		}
		slices.SortFunc(parts, func(a, b kadm.ListedOffset) int { return int(a.Partition - b.Partition) })
		for _, e := range parts {
			if e.Err != nil {
				return nil, fmt.Errorf("end offset of %s[%d]: %w", e.Topic, e.Partition, e.Err)
			}
			s, _ := starts.Lookup(e.Topic, e.Partition)
			pl := PartitionLag{Partition: e.Partition, Start: s.Offset, End: e.Offset, Member: owner[e.Partition]}
			if c, ok := committed.Lookup(e.Topic, e.Partition); ok && c.Err == nil && c.At >= 0 {
				at := c.At
				pl.Committed = &at
				pl.Deleted = max(0, s.Offset-at)
				from := max(at, s.Offset)
				if at > e.Offset {
					// The partition ends before the commit (the broker lost
					// records): the group reads it again from its start.
					from = s.Offset
				}
				pl.Lag = e.Offset - from
				pl.CommitMetadata = c.Metadata
			} else if gs.StartPosition == configs.StartEarliest {
				pl.Lag = e.Offset - s.Offset
			}
			gs.Lag += pl.Lag
			gs.Deleted += pl.Deleted
			gs.Partitions = append(gs.Partitions, pl)
		}
		out = append(out, gs)
	}
	return out, nil
}
